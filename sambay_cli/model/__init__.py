from .cache import SambaYCache
from .modeling import ForwardOutput, SambaYForCausalLM

__all__ = ["SambaYCache", "SambaYForCausalLM", "ForwardOutput"]
