"""PointMaze helpers: the maze grid, shortest paths on it, and the scripted waypoint controller.

The controller is the one D4RL's maze2d data was made with, in spirit: a shortest path over the
free cells of the maze grid, then a PD controller on the ball towards the next waypoint.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np


class MazeGrid:
    """The maze map of a gymnasium-robotics maze env, with cell <-> xy conversions."""

    def __init__(self, maze_map: list[list], scaling: float = 1.0):
        self.free = np.array([[cell != 1 for cell in row] for row in maze_map], dtype=bool)
        self.scaling = float(scaling)
        self.rows, self.cols = self.free.shape
        self.x_center = self.cols / 2 * self.scaling
        self.y_center = self.rows / 2 * self.scaling

    @classmethod
    def from_env(cls, env) -> 'MazeGrid':
        """Read the grid of a (possibly wrapped) PointMaze env."""
        maze = env.unwrapped.maze
        return cls(maze.maze_map, maze.maze_size_scaling)

    def cell_to_xy(self, cell: tuple[int, int]) -> np.ndarray:
        """Centre of a (row, col) cell in world coordinates."""
        row, col = cell
        return np.array([(col + 0.5) * self.scaling - self.x_center,
                         self.y_center - (row + 0.5) * self.scaling])

    def xy_to_cell(self, xy: np.ndarray) -> tuple[int, int]:
        """Return the (row, col) cell that holds a world position, clamped to the map."""
        row = int(np.floor((self.y_center - xy[1]) / self.scaling))
        col = int(np.floor((xy[0] + self.x_center) / self.scaling))
        return min(max(row, 0), self.rows - 1), min(max(col, 0), self.cols - 1)

    def is_free(self, xy: np.ndarray) -> bool:
        """Whether a world position lies in a free cell of the map."""
        row = np.floor((self.y_center - xy[1]) / self.scaling)
        col = np.floor((xy[0] + self.x_center) / self.scaling)
        if not (0 <= row < self.rows and 0 <= col < self.cols):
            return False
        return bool(self.free[int(row), int(col)])

    def free_cells(self) -> list[tuple[int, int]]:
        """All free (row, col) cells."""
        return [tuple(int(v) for v in cell) for cell in np.argwhere(self.free)]

    def shortest_path(self, start: tuple[int, int], goal: tuple[int, int]) -> list[tuple]:
        """Cells from start to goal (both included) by breadth-first search, 4-connected."""
        parents = {start: None}
        queue = deque([start])
        while queue:
            cell = queue.popleft()
            if cell == goal:
                break
            row, col = cell
            for step in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                nxt = (row + step[0], col + step[1])
                if (0 <= nxt[0] < self.rows and 0 <= nxt[1] < self.cols
                        and self.free[nxt] and nxt not in parents):
                    parents[nxt] = cell
                    queue.append(nxt)
        if goal not in parents:
            raise ValueError(f'no path from cell {start} to cell {goal} in this maze')
        path = [goal]
        while parents[path[-1]] is not None:
            path.append(parents[path[-1]])
        return path[::-1]


@dataclass
class WaypointController:
    """Shortest path on the grid, then PD control of the ball towards the next waypoint."""

    grid: MazeGrid
    p_gain: float = 10.0
    d_gain: float = 1.0

    def waypoint(self, position: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """Return the next point to steer at: the next cell centre, or the goal in its cell."""
        path = self.grid.shortest_path(self.grid.xy_to_cell(position), self.grid.xy_to_cell(goal))
        if len(path) <= 1:
            return goal
        # Skip the current cell's centre: head for the next cell on the path.
        return self.grid.cell_to_xy(path[1]) if len(path) > 2 else goal

    def __call__(self, observation: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """Return an action in [-1, 1]^2 for a PointMaze observation [x, y, vx, vy]."""
        position, velocity = observation[:2], observation[2:4]
        target = self.waypoint(position, goal)
        action = self.p_gain * (target - position) - self.d_gain * velocity
        return np.clip(action, -1.0, 1.0)
