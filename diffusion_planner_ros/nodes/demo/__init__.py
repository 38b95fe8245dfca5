"""The demo graph where launch_ros is missing: its runner, episode client and lossy link."""
