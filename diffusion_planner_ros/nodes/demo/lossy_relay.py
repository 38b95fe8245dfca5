"""A lossy link for fault injection: `sim_graph --realtime --drop-states 0.2`."""

from __future__ import annotations

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import JointState


class LossyRelay(Node):
    """Republishes JointState from ``source`` on ``target``, dropping a share at random."""

    def __init__(self, source: str, target: str, drop: float, seed: int = 0):
        super().__init__('lossy_relay')
        if not 0.0 <= drop < 1.0:
            raise ValueError(f'drop share must be in [0, 1), got {drop}')
        self.drop, self.rng = drop, np.random.default_rng(seed)
        self.publisher = self.create_publisher(JointState, target, 10)
        self.create_subscription(JointState, source, self._relay, 10)
        self.received = self.dropped = 0

    def _relay(self, msg: JointState) -> None:
        self.received += 1
        if self.rng.random() < self.drop:
            self.dropped += 1
            return
        self.publisher.publish(msg)
