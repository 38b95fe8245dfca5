"""SCHED_FIFO for a node's threads: applied to every thread, the planning thread one lower."""

import json
import os
import resource
import subprocess
import sys
import textwrap

import pytest

from diffusion_planner_ros.scheduling import set_realtime_priority

# Run in a child, so this test process keeps the normal scheduler.
CHILD = textwrap.dedent('''
    import json, os, sys, threading
    from diffusion_planner_ros.scheduling import rank_below_senders, set_realtime_priority
    if len(sys.argv) > 2:
        os.setgid(65534)
        os.setuid(65534)  # nobody: no CAP_SYS_NICE
    before = threading.Thread(target=threading.Event().wait, daemon=True)
    before.start()
    problem = set_realtime_priority(int(sys.argv[1]))
    ranked, done = {}, threading.Event()
    def plan():
        ranked['returned'] = rank_below_senders()
        ranked['tid'] = threading.get_native_id()
        done.set()
        threading.Event().wait()
    planning = threading.Thread(target=plan, daemon=True)
    planning.start()
    done.wait(30)
    threads = {}
    for tid in os.listdir('/proc/self/task'):
        threads[tid] = [os.sched_getscheduler(int(tid)),
                        os.sched_getparam(int(tid)).sched_priority]
    print(json.dumps({'problem': problem, 'threads': threads, 'ranked': ranked,
                      'before': before.native_id, 'fifo': os.SCHED_FIFO}))
''')


def run_child(*args):
    out = subprocess.run([sys.executable, '-c', CHILD, *map(str, args)], capture_output=True,
                         text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def fifo_permitted(priority):
    soft, _ = resource.getrlimit(resource.RLIMIT_RTPRIO)
    return os.geteuid() == 0 or soft == resource.RLIM_INFINITY or soft >= priority


@pytest.mark.parametrize('bad', [-1, 100, 1.5, True, '5'])
def test_priority_outside_0_to_99_is_refused_by_name(bad):
    with pytest.raises(ValueError, match='thread_priority'):
        set_realtime_priority(bad)


def test_zero_leaves_the_normal_scheduler():
    out = run_child(0)
    assert out['problem'] is None and out['ranked']['returned'] is None
    assert {policy for policy, _ in out['threads'].values()} == {os.SCHED_OTHER}


@pytest.mark.skipif(not sys.platform.startswith('linux') or not fifo_permitted(20),
                    reason='SCHED_FIFO 20 is not permitted for this user')
def test_every_thread_runs_fifo_and_the_planning_thread_one_lower():
    out = run_child(20)
    assert out['problem'] is None
    threads = out['threads']
    planning = str(out['ranked']['tid'])
    assert out['ranked']['returned'] == 19 and threads[planning] == [out['fifo'], 19]
    # The threads that existed before (main, one started earlier) and every other.
    others = {tid: value for tid, value in threads.items() if tid != planning}
    assert str(out['before']) in others and str(os.getpid()) not in others
    assert all(value == [out['fifo'], 20] for value in others.values()), threads


@pytest.mark.skipif(os.geteuid() != 0, reason='needs root to drop to the nobody user')
def test_a_user_without_the_right_is_told_and_keeps_the_normal_scheduler():
    out = run_child(20, 'as-nobody')
    assert 'not permitted' in out['problem'] and 'CAP_SYS_NICE' in out['problem']
    assert {policy for policy, _ in out['threads'].values()} == {os.SCHED_OTHER}
    assert out['ranked']['returned'] is None
