"""SCHED_FIFO for a node's threads: every thread at the priority, planning threads one lower."""

import json
import os
import resource
import subprocess
import sys
import textwrap

import pytest

from diffusion_planner_ros.scheduling import set_realtime_priority

# Run in a child, so this test process keeps the normal scheduler. The child plays a node: a
# sender thread exists before the priority is set; then a pool thread and a planning thread
# start (as a planner's do), the planning threads are ranked, and each side starts one more.
CHILD = textwrap.dedent('''
    import json, os, sys, threading
    from diffusion_planner_ros.scheduling import (rank_planning_threads,
                                                  set_realtime_priority, thread_ids)
    priority, mode = int(sys.argv[1]), sys.argv[2]
    if mode == 'nobody':
        os.setgid(65534)
        os.setuid(65534)  # no CAP_SYS_NICE
    def park(started):
        started.set()
        threading.Event().wait()
    def start(target=park):
        started = threading.Event()
        thread = threading.Thread(target=target, args=(started,), daemon=True)
        thread.start()
        started.wait(30)
        return thread.native_id
    ids = {'main': threading.get_native_id(), 'sender': start()}
    problem = set_realtime_priority(priority)
    senders = thread_ids()
    ids['pool'] = start()
    ranked_now, later = threading.Event(), threading.Event()
    def plan(started):
        ids['from_planning'] = start()
        started.set()
        ranked_now.wait(30)
        ids['from_planning_after'] = start()
        later.set()
        threading.Event().wait()
    ids['planning'] = start(plan)
    ranked = rank_planning_threads(None if mode == 'process' else senders)
    ranked_now.set()
    later.wait(30)
    ids['from_main'] = start()  # as an executor's thread would be: a sender
    policy = {name: [os.sched_getscheduler(tid), os.sched_getparam(tid).sched_priority]
              for name, tid in ids.items()}
    print(json.dumps({'problem': problem, 'ranked': ranked, 'policy': policy,
                      'fifo': os.SCHED_FIFO, 'other': os.SCHED_OTHER}))
''')


def run_child(priority, mode='node'):
    out = subprocess.run([sys.executable, '-c', CHILD, str(priority), mode],
                         capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def fifo_permitted(priority):
    soft, _ = resource.getrlimit(resource.RLIMIT_RTPRIO)
    return os.geteuid() == 0 or soft == resource.RLIM_INFINITY or soft >= priority


needs_fifo = pytest.mark.skipif(not sys.platform.startswith('linux') or not fifo_permitted(20),
                                reason='SCHED_FIFO 20 is not permitted for this user')


@pytest.mark.parametrize('bad', [-1, 100, 1.5, True, '5'])
def test_priority_outside_0_to_99_is_refused_by_name(bad):
    with pytest.raises(ValueError, match='thread_priority'):
        set_realtime_priority(bad)


def test_zero_leaves_the_normal_scheduler():
    out = run_child(0)
    assert out['problem'] is None and out['ranked'] is None
    assert {policy for policy, _ in out['policy'].values()} == {out['other']}


@needs_fifo
def test_senders_run_at_the_priority_and_planning_threads_one_lower():
    out = run_child(20)
    assert out['problem'] is None and out['ranked'] == 19
    fifo, policy = out['fifo'], out['policy']
    for name in ('main', 'sender', 'from_main'):
        assert policy[name] == [fifo, 20], (name, policy)
    # The planner's threads, those started before the ranking and after it.
    for name in ('pool', 'planning', 'from_planning', 'from_planning_after'):
        assert policy[name] == [fifo, 19], (name, policy)


@needs_fifo
def test_a_planning_process_runs_every_thread_one_lower():
    out = run_child(20, 'process')
    assert out['ranked'] == 19
    assert all(value == [out['fifo'], 19] for value in out['policy'].values()), out['policy']


@needs_fifo
def test_at_priority_1_the_planning_threads_take_the_normal_scheduler():
    out = run_child(1)
    assert out['ranked'] == 0
    assert out['policy']['main'] == [out['fifo'], 1]
    assert out['policy']['planning'] == [out['other'], 0]


@pytest.mark.skipif(os.geteuid() != 0, reason='needs root to drop to the nobody user')
def test_a_user_without_the_right_is_told_and_keeps_the_normal_scheduler():
    out = run_child(20, 'nobody')
    assert 'not permitted' in out['problem'] and 'CAP_SYS_NICE' in out['problem']
    assert {policy for policy, _ in out['policy'].values()} == {out['other']}
    assert out['ranked'] is None
