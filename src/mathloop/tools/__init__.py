"""Tools for tool-integrated reasoning: the sandboxed Python executor (`Sandbox`) and the TIR rollout loop (`tir`).

The sandbox is imported on first use, so that naming `SandboxUnavailable` (as the command does) costs nothing."""

from mathloop.tools.errors import SandboxUnavailable

__all__ = ["ExecResult", "Sandbox", "SandboxUnavailable", "format_output", "truncate"]


def __getattr__(name: str):
    if name in ("ExecResult", "Sandbox", "format_output", "truncate"):
        from mathloop.tools import sandbox

        return getattr(sandbox, name)
    raise AttributeError(f"module 'mathloop.tools' has no attribute {name!r}")
