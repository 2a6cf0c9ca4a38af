"""The sandbox's error a user can cause, in a module of its own so that the command names it without importing the
sandbox."""


class SandboxUnavailable(RuntimeError):
    """This host offers no way to confine a TIR cell's file access (neither namespaces nor Landlock), and the caller
    did not opt in to running without (`Sandbox(unsafe_file_access=True)`, --unsafe-sandbox-file-access)."""


# The field metadata of a stage's `unsafe_sandbox_file_access` setting (eval, sample, grpo): its flag's help.
UNSAFE_FILE_ACCESS_SETTING = {
    "help": "tir: where this host offers neither user namespaces nor Landlock, run the model's code anyway; it can then "
            "read and write every file you can (see docs/sandbox.md)"}
