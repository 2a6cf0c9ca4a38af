"""Tools for tool-integrated reasoning: the sandboxed Python executor (`Sandbox`) and the TIR rollout loop (`tir`)."""

from mathloop.tools.sandbox import ExecResult, Sandbox, format_output, truncate

__all__ = ["ExecResult", "Sandbox", "format_output", "truncate"]
