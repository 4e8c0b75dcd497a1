"""A ROS 2 node answering spatial questions about the latest camera frame with st.

Not run by the tests (no ROS 2 on these machines); written against the rclpy API as documented.

    ros2 run --prefix 'python3' ... or: python3 examples/python/ros2_node.py --ros-args \
        -p model:=/path/to/spatialthinker-7b-export -r image:=/camera/color/image_raw

Subscribes to `image` (sensor_msgs/Image: rgb8, bgr8, rgba8, bgra8 or mono8) and keeps the latest
frame; encodes it once, on the first question after it arrived (the vision tower and the prompt
prefix are paid once per frame, each question after that is a short prefill). Questions arrive on
`question` (std_msgs/String, e.g. "Is the cup left of the plate? (A) yes (B) no"); each answer is
published on `answer` (std_msgs/String) as st-run --json's JSON: the scene graph with boxes in the
image's pixels, the chosen option, validity and timings.
"""

import threading

import numpy as np
import rclpy
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import String

import st

CHANNELS = {"rgb8": (3, [0, 1, 2]), "bgr8": (3, [2, 1, 0]), "rgba8": (4, [0, 1, 2]), "bgra8": (4, [2, 1, 0]),
            "mono8": (1, [0, 0, 0])}


def image_to_rgb(msg: Image) -> np.ndarray:
    """A sensor_msgs/Image as a (height, width, 3) uint8 RGB array (rows `step` bytes apart)."""
    if msg.encoding not in CHANNELS:
        raise ValueError(f"unsupported image encoding {msg.encoding!r}")
    channels, order = CHANNELS[msg.encoding]
    rows = np.frombuffer(bytes(msg.data), dtype=np.uint8).reshape(msg.height, msg.step)
    pixels = rows[:, : msg.width * channels].reshape(msg.height, msg.width, channels)
    return np.ascontiguousarray(pixels[:, :, order])


class SpatialThinkerNode(Node):
    def __init__(self) -> None:
        super().__init__("spatialthinker")
        model = self.declare_parameter("model", "").value
        threads = self.declare_parameter("threads", 0).value
        self.max_new_tokens = self.declare_parameter("max_new_tokens", 1024).value
        self.engine = st.Engine(model, threads=threads or None)
        self.lock = threading.Lock()
        self.latest = None  # the newest sensor_msgs/Image, not yet encoded
        self.frame = None  # the encoded frame of the newest image asked about
        self.create_subscription(Image, "image", self.on_image, 1)
        self.create_subscription(String, "question", self.on_question, 10)
        self.answers = self.create_publisher(String, "answer", 10)
        self.get_logger().info(f"st {st.__version__}: model {self.engine.model_dir} on {self.engine.device}")

    def on_image(self, msg: Image) -> None:
        with self.lock:
            self.latest = msg

    def on_question(self, msg: String) -> None:
        with self.lock:
            latest, self.latest = self.latest, None
        try:
            if latest is not None:
                self.frame = self.engine.encode(image_to_rgb(latest))
            if self.frame is None:
                self.get_logger().warning("no image received yet")
                return
            answer = self.engine.ask(self.frame, msg.data, max_new_tokens=self.max_new_tokens)
        except (st.StError, ValueError) as e:
            self.get_logger().error(f"question {msg.data!r}: {e}")
            return
        self.answers.publish(String(data=answer.to_json()))
        self.get_logger().info(f"{msg.data!r} -> {answer!r}")


def main() -> None:
    rclpy.init()
    node = SpatialThinkerNode()
    try:
        rclpy.spin(node)
    finally:
        node.destroy_node()
        rclpy.shutdown()


if __name__ == "__main__":
    main()
