"""Start the MuJoCo sim bridge and the planner (and RViz) for one robot.

    ros2 launch diffusion_planner_ros sim.launch.py                 # the PointMaze ball
    ros2 launch diffusion_planner_ros sim.launch.py robot:=hopper   # gymnasium's Hopper-v5
    ros2 launch diffusion_planner_ros sim.launch.py use_sim:=false \
        state_topic:=/my_robot/joint_states command_topic:=/my_controller/commands

The launch-equivalent runner (`sim_graph`, used by `make demo` where launch_ros is missing)
reads this file, so keep to DeclareLaunchArgument, LaunchConfiguration, PathJoinSubstitution,
FindPackageShare, IfCondition and Node. A file name is a list of substitutions (concatenated)
around a PathJoinSubstitution: a list inside PathJoinSubstitution needs launch >= 3.4.5, which
older Jazzy releases lack.

``robot:=<name>`` picks three files by name: the profile config/robots/<name>.yaml, the bundle
models/<name> and the parameters config/sim/<name>.yaml; each can still be given on its own.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    """Bridge + planner + RViz, remapped to the ros2_control topic names."""
    return LaunchDescription([
        DeclareLaunchArgument('robot', default_value='pointmaze_umaze',
                              description='pointmaze_umaze, pointmaze_medium, hopper or walker2d: '
                                          'picks profile, bundle, params and view by name'),
        DeclareLaunchArgument('profile', default_value=[PathJoinSubstitution(
            [FindPackageShare('diffusion_planner_ros'), 'config', 'robots',
             LaunchConfiguration('robot')]), '.yaml'], description='robot profile YAML'),
        DeclareLaunchArgument('bundle', default_value=PathJoinSubstitution(
            [FindPackageShare('diffusion_planner_ros'), 'models', LaunchConfiguration('robot')]),
            description='planner bundle directory'),
        DeclareLaunchArgument('params', default_value=[PathJoinSubstitution(
            [FindPackageShare('diffusion_planner_ros'), 'config', 'sim',
             LaunchConfiguration('robot')]), '.yaml'],
            description='ROS parameters YAML'),
        DeclareLaunchArgument('use_sim', default_value='true',
                              description='start the MuJoCo bridge (false: a real driver)'),
        DeclareLaunchArgument('use_sim_time', default_value=LaunchConfiguration('use_sim'),
                              description="stamp with the bridge's /clock (default: with the "
                                          'bridge); false: the wall clock, as with a robot'),
        DeclareLaunchArgument('use_rviz', default_value='false', description='start RViz'),
        DeclareLaunchArgument('rviz_config', default_value=[PathJoinSubstitution(
            [FindPackageShare('diffusion_planner_ros'), 'config', 'rviz',
             LaunchConfiguration('robot')]), '.rviz'],
            description="RViz view (default: the robot's, from above for a maze, from the "
                        'side for a walker)'),
        DeclareLaunchArgument('state_topic', default_value='/joint_states',
                              description='sensor_msgs/JointState from the robot'),
        DeclareLaunchArgument('command_topic', default_value='/effort_controller/commands',
                              description='std_msgs/Float64MultiArray to the robot'),
        Node(
            package='diffusion_planner_ros',
            executable='sim_bridge_node',
            name='sim_bridge_node',
            condition=IfCondition(LaunchConfiguration('use_sim')),
            parameters=[LaunchConfiguration('params'),
                        {'profile': LaunchConfiguration('profile')}],
            remappings=[('joint_states', LaunchConfiguration('state_topic')),
                        ('commands', LaunchConfiguration('command_topic')),
                        ('robot_markers', '/robot_markers'),
                        ('episode_goal', '/episode_goal'),
                        ('reward', '/reward'),
                        ('episode_end', '/episode_end')],
            output='screen',
        ),
        Node(
            package='diffusion_planner_ros',
            executable='planner_node',
            name='planner_node',
            parameters=[LaunchConfiguration('params'),
                        {'profile': LaunchConfiguration('profile'),
                         'bundle': LaunchConfiguration('bundle'),
                         'use_sim_time': LaunchConfiguration('use_sim_time')}],
            remappings=[('joint_states', LaunchConfiguration('state_topic')),
                        ('commands', LaunchConfiguration('command_topic')),
                        ('goal_pose', '/goal_pose'),
                        ('reward', '/reward'),
                        ('episode_end', '/episode_end'),
                        ('plan', '/plan'),
                        ('plan_markers', '/plan_markers')],
            output='screen',
        ),
        Node(
            package='rviz2',
            executable='rviz2',
            name='rviz2',
            condition=IfCondition(LaunchConfiguration('use_rviz')),
            arguments=['-d', LaunchConfiguration('rviz_config')],
            parameters=[{'use_sim_time': LaunchConfiguration('use_sim_time')}],
        ),
    ])
