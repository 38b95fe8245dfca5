#!/usr/bin/env python3
"""Independent real-time PointMaze "robot" driver for a ROS 2 planner node.

Written from scratch; imports nothing from diffusion_planner_ros.

Plays the role of a real robot:
  * steps a gymnasium-robotics PointMaze env at wall-clock rate (env dt),
    zero-order-holding the latest received command (zero before any command
    and zero if the last command is older than --stale-s seconds);
  * publishes sensor_msgs/JointState (shuffled joint order + an unrelated
    extra joint) after every step;
  * subscribes std_msgs/Float64MultiArray commands (2 values, clipped to
    [-1, 1]);
  * per episode: reset with seed+i, choose the free cell farthest (BFS) from
    the start cell as the goal, pause states for 0.5 s ("robot reset"),
    publish the goal as geometry_msgs/PoseStamped on /goal_pose a few times,
    then run until success (<= 0.45 m) or --max-steps.

Writes a JSON summary (--json) and prints it on stdout.
"""
import argparse
import collections
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time

import numpy as np

SUCCESS_RADIUS = 0.45
EXTRA_JOINT = "camera_pan_joint"


def log(msg):
    print(f"[maze_driver {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="PointMaze_UMaze-v3")
    p.add_argument("--episodes", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=None,
                   help="default: 600 for UMaze, 900 otherwise (Medium)")
    p.add_argument("--state-topic", default="/my_robot/joint_states")
    p.add_argument("--command-topic", default="/my_robot/cmd")
    p.add_argument("--goal-topic", default="/goal_pose")
    p.add_argument("--json", default=None, help="write the JSON summary here")
    p.add_argument("--wait-timeout", type=float, default=120.0,
                   help="max seconds to wait for a publisher on the command topic")
    p.add_argument("--settle-s", type=float, default=1.0,
                   help="extra seconds after the command publisher appears")
    p.add_argument("--stale-s", type=float, default=0.5,
                   help="commands older than this are replaced by zero")
    p.add_argument("--reset-pause-s", type=float, default=0.5,
                   help="no states are published for this long before each episode")
    p.add_argument("--goal-repeats", type=int, default=5,
                   help="publish the goal this many times at episode start")
    p.add_argument("--goal-repeat-every", type=int, default=10,
                   help="steps between goal re-publications")
    return p.parse_args()


# --------------------------------------------------------------------------
# maze helpers
# --------------------------------------------------------------------------

def bfs_distances(maze_map, start):
    """BFS path lengths (4-connected) over free cells (0 = free, 1 = wall)."""
    grid = np.asarray(maze_map)
    free = grid != 1
    rows, cols = grid.shape
    dist = {tuple(start): 0}
    q = collections.deque([tuple(start)])
    while q:
        r, c = q.popleft()
        for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            nr, nc = r + dr, c + dc
            if 0 <= nr < rows and 0 <= nc < cols and free[nr, nc] and (nr, nc) not in dist:
                dist[(nr, nc)] = dist[(r, c)] + 1
                q.append((nr, nc))
    return dist


def pick_hard_goal(maze, start_rc, start_xy):
    dist = bfs_distances(maze.maze_map, start_rc)
    best = None
    for rc, d in dist.items():
        xy = np.asarray(maze.cell_rowcol_to_xy(np.array(rc)), dtype=float)
        key = (d, float(np.linalg.norm(xy - start_xy)), -rc[0], -rc[1])
        if best is None or key > best[0]:
            best = (key, rc, xy, d)
    return best[1], best[2], best[3]


def xy_to_rowcol(maze, xy):
    if hasattr(maze, "cell_xy_to_rowcol"):
        rc = maze.cell_xy_to_rowcol(np.asarray(xy, dtype=float))
        return (int(rc[0]), int(rc[1]))
    # fallback (same convention as gymnasium-robotics Maze)
    s = maze.maze_size_scaling
    col = math.floor((xy[0] + maze.x_map_center) / s)
    row = math.floor((maze.y_map_center - xy[1]) / s)
    return (int(row), int(col))


def rowcol_to_xy(maze, rc):
    if hasattr(maze, "cell_rowcol_to_xy"):
        return np.asarray(maze.cell_rowcol_to_xy(np.array(rc)), dtype=float)
    s = maze.maze_size_scaling
    return np.array([(rc[1] + 0.5) * s - maze.x_map_center,
                     maze.y_map_center - (rc[0] + 0.5) * s], dtype=float)


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def main():
    args = parse_args()
    if args.max_steps is None:
        args.max_steps = 600 if "umaze" in args.env.lower() else 900

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    domain = os.environ.get("ROS_DOMAIN_ID")
    if domain is None:
        log("WARNING: ROS_DOMAIN_ID not set; using the default domain 0")

    # maze make() writes xml files into the temp dir: isolate them.
    tmpdir = tempfile.mkdtemp(prefix="maze_driver_")
    os.environ["TMPDIR"] = tmpdir
    tempfile.tempdir = tmpdir

    import gymnasium as gym
    import gymnasium_robotics
    gym.register_envs(gymnasium_robotics)

    import rclpy
    from rclpy.executors import SingleThreadedExecutor, ExternalShutdownException
    from rclpy.qos import QoSProfile, ReliabilityPolicy, DurabilityPolicy, HistoryPolicy
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray
    from geometry_msgs.msg import PoseStamped

    env = gym.make(args.env, continuing_task=True, reset_target=False,
                   max_episode_steps=args.max_steps + 1000)
    u = env.unwrapped
    sim = getattr(u, "point_env", None) or u
    data = sim.data if hasattr(sim, "data") else u.data
    data_src = ("unwrapped.point_env.data"
                if hasattr(u, "point_env") and hasattr(u.point_env, "data") else "unwrapped.data")
    dt = float(getattr(u, "dt", None) or sim.dt)
    maze = u.maze
    log(f"env={args.env} dt={dt} data from {data_src} max_steps={args.max_steps} "
        f"ROS_DOMAIN_ID={domain} range={os.environ.get('ROS_AUTOMATIC_DISCOVERY_RANGE')}")

    rng = np.random.default_rng(12345 + args.seed)
    names = ["ball_x", "ball_y", EXTRA_JOINT]
    while True:
        order = list(rng.permutation(len(names)))
        if order[:2] != [0, 1]:  # make sure the ball joints are not simply first and in order
            break
    joint_names = [names[i] for i in order]
    log(f"joint order: {joint_names}")

    # ------------------------------------------------------------------ ROS
    rclpy.init()
    node = rclpy.create_node("indep_maze_driver")
    state_pub = node.create_publisher(JointState, args.state_topic, 10)
    goal_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                          reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.TRANSIENT_LOCAL)
    goal_pub = node.create_publisher(PoseStamped, args.goal_topic, goal_qos)

    lock = threading.Lock()
    cmd_state = {"cmd": np.zeros(2), "t": None, "count": 0, "bad": 0, "nonfinite": 0}

    def on_cmd(msg):
        vals = np.asarray(msg.data, dtype=float)
        now = time.monotonic()
        with lock:
            if vals.shape != (2,):
                cmd_state["bad"] += 1
                return
            if not np.all(np.isfinite(vals)):
                cmd_state["nonfinite"] += 1
                vals = np.nan_to_num(vals, nan=0.0, posinf=1.0, neginf=-1.0)
            cmd_state["cmd"] = np.clip(vals, -1.0, 1.0)
            cmd_state["t"] = now
            cmd_state["count"] += 1

    node.create_subscription(Float64MultiArray, args.command_topic, on_cmd, 10)

    executor = SingleThreadedExecutor()
    executor.add_node(node)

    def spin():
        try:
            executor.spin()
        except ExternalShutdownException:
            pass  # expected: rclpy.try_shutdown() from the main thread

    spin_thread = threading.Thread(target=spin, daemon=True)
    spin_thread.start()

    summary = {
        "env": args.env,
        "episodes_requested": args.episodes,
        "seed": args.seed,
        "max_steps": args.max_steps,
        "success_radius": SUCCESS_RADIUS,
        "dt": dt,
        "state_topic": args.state_topic,
        "command_topic": args.command_topic,
        "goal_topic": args.goal_topic,
        "joint_order": joint_names,
        "ros_domain_id": domain,
        "data_source": data_src,
        "episodes": [],
    }
    rc = 0

    def publish_state():
        msg = JointState()
        msg.header.stamp = node.get_clock().now().to_msg()
        msg.header.frame_id = ""
        vals = {"ball_x": (float(data.qpos[0]), float(data.qvel[0])),
                "ball_y": (float(data.qpos[1]), float(data.qvel[1])),
                EXTRA_JOINT: (0.3, 0.0)}
        msg.name = list(joint_names)
        msg.position = [vals[n][0] for n in joint_names]
        msg.velocity = [vals[n][1] for n in joint_names]
        state_pub.publish(msg)

    def publish_goal(xy):
        msg = PoseStamped()
        msg.header.stamp = node.get_clock().now().to_msg()
        msg.header.frame_id = "map"
        msg.pose.position.x = float(xy[0])
        msg.pose.position.y = float(xy[1])
        msg.pose.position.z = 0.0
        msg.pose.orientation.w = 1.0
        goal_pub.publish(msg)

    try:
        # ------------------------------------------- wait for the planner
        t0 = time.monotonic()
        log(f"waiting up to {args.wait_timeout:.0f}s for a publisher on {args.command_topic}")
        while node.count_publishers(args.command_topic) == 0:
            if time.monotonic() - t0 > args.wait_timeout:
                raise TimeoutError(
                    f"no publisher on {args.command_topic} after {args.wait_timeout}s")
            time.sleep(0.2)
        summary["publisher_wait_s"] = round(time.monotonic() - t0, 2)
        log(f"command publisher found after {summary['publisher_wait_s']}s")
        time.sleep(args.settle_s)

        for i in range(args.episodes):
            seed = args.seed + i
            env.reset(seed=seed)
            start_xy = np.array([float(data.qpos[0]), float(data.qpos[1])])
            start_rc = xy_to_rowcol(maze, start_xy)
            goal_rc, goal_xy, bfs_len = pick_hard_goal(maze, start_rc, start_xy)
            goal_xy = rowcol_to_xy(maze, goal_rc)
            goal_set = False
            try:
                u.goal = goal_xy.copy()
                if hasattr(u, "update_target_site_pos"):
                    u.update_target_site_pos()
                goal_set = True
            except Exception as e:  # pragma: no cover
                log(f"could not set env goal: {e!r}")

            # robot reset: no states for a while
            time.sleep(args.reset_pause_s)
            publish_goal(goal_xy)
            goals_sent = 1
            log(f"episode {i}: seed={seed} start={start_xy.round(3).tolist()} cell={start_rc} "
                f"goal={goal_xy.tolist()} cell={goal_rc} bfs={bfs_len}")

            cmds_before = cmd_state["count"]
            ep_start = time.monotonic()
            next_t = ep_start
            success = False
            steps_to_success = None
            min_dist = float("inf")
            late_steps = 0
            max_late = 0.0
            stale_steps = 0
            first_cmd_step = None
            sum_abs_cmd = np.zeros(2)
            steps = 0
            for k in range(1, args.max_steps + 1):
                now = time.monotonic()
                if now < next_t:
                    time.sleep(next_t - now)
                    now = time.monotonic()
                lateness = now - next_t
                if lateness > dt:
                    late_steps += 1
                    max_late = max(max_late, lateness)
                    next_t = now  # do not burst to catch up
                next_t += dt

                with lock:
                    ct = cmd_state["t"]
                    cmd = cmd_state["cmd"].copy()
                    fresh_after_start = cmd_state["count"] > cmds_before
                if ct is None or now - ct > args.stale_s:
                    if ct is not None:
                        stale_steps += 1
                    cmd = np.zeros(2)
                if first_cmd_step is None and fresh_after_start:
                    first_cmd_step = k
                sum_abs_cmd += np.abs(cmd)

                env.step(cmd.astype(np.float32))
                steps = k
                publish_state()
                if goals_sent < args.goal_repeats and k % args.goal_repeat_every == 0:
                    publish_goal(goal_xy)
                    goals_sent += 1

                d = float(np.linalg.norm(np.array([data.qpos[0], data.qpos[1]]) - goal_xy))
                min_dist = min(min_dist, d)
                if d <= SUCCESS_RADIUS:
                    success = True
                    steps_to_success = k
                    break
            wall = time.monotonic() - ep_start
            final_xy = [float(data.qpos[0]), float(data.qpos[1])]
            ep = {
                "episode": i,
                "seed": seed,
                "start": [round(v, 4) for v in start_xy.tolist()],
                "start_cell": list(start_rc),
                "goal": [round(v, 4) for v in goal_xy.tolist()],
                "goal_cell": list(goal_rc),
                "goal_bfs_cells": bfs_len,
                "env_goal_set": goal_set,
                "success": success,
                "steps_to_success": steps_to_success,
                "steps": steps,
                "final": [round(v, 4) for v in final_xy],
                "final_dist": round(float(np.linalg.norm(np.array(final_xy) - goal_xy)), 4),
                "min_dist": round(min_dist, 4),
                "wall_s": round(wall, 3),
                "achieved_step_hz": round(steps / wall, 1) if wall > 0 else None,
                "late_steps": late_steps,
                "max_late_s": round(max_late, 4),
                "commands_received": cmd_state["count"] - cmds_before,
                "first_fresh_command_step": first_cmd_step,
                "stale_zero_steps": stale_steps,
                "mean_abs_cmd": [round(v, 3) for v in (sum_abs_cmd / max(steps, 1)).tolist()],
            }
            summary["episodes"].append(ep)
            log(f"episode {i}: success={success} steps_to_success={steps_to_success} "
                f"final_dist={ep['final_dist']} cmds={ep['commands_received']} late={late_steps}")
    except Exception as e:
        summary["error"] = repr(e)
        log(f"ERROR: {e!r}")
        rc = 2
    finally:
        eps = summary["episodes"]
        n = len(eps)
        succ = [e for e in eps if e["success"]]
        summary["episodes_run"] = n
        summary["successes"] = len(succ)
        summary["success_rate"] = (len(succ) / n) if n else None
        summary["mean_steps_to_success"] = (
            float(np.mean([e["steps_to_success"] for e in succ])) if succ else None)
        summary["commands_received_total"] = cmd_state["count"]
        summary["commands_malformed"] = cmd_state["bad"]
        summary["commands_nonfinite"] = cmd_state["nonfinite"]

        rclpy.try_shutdown()
        spin_thread.join(timeout=10.0)
        if spin_thread.is_alive():
            log("WARNING: executor thread did not stop")
        try:
            node.destroy_node()
        except Exception:
            pass
        try:
            env.close()
        except Exception:
            pass
        shutil.rmtree(tmpdir, ignore_errors=True)

        text = json.dumps(summary, indent=2)
        if args.json:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json, "w") as f:
                f.write(text + "\n")
        print(text, flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
