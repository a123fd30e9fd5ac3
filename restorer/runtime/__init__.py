"""How a network or operator runs: the Runner protocol and its implementations."""

from restorer.runtime.base import Runner, RunnerInfo, OutOfMemory

__all__ = ["Runner", "RunnerInfo", "OutOfMemory"]
