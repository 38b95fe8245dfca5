"""ROS 2 nodes: ROS I/O only; the planning and simulation logic lives in the library."""
