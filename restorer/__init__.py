"""restorer: photo restoration with published networks, on ONNX Runtime, any image size.

The core library never imports Qt, and imports torch only where a network is built,
exported or run eagerly (restorer.archs, restorer.run.torch, restorer.convert).
"""

__version__ = "0.1.0"
