"""The sandbox's error a user can cause, in a module of its own so that the command names it without importing the
sandbox."""


class SandboxUnavailable(RuntimeError):
    """This host offers no way to confine a TIR cell's file access (neither namespaces nor Landlock), and the caller
    did not opt in to running without (`Sandbox(unsafe_file_access=True)`, --unsafe-sandbox-file-access)."""
