"""Each `mathloop` command is one entry of `cli.COMMANDS`: its help line, its flags and what it runs."""

import dataclasses

import pytest

from mathloop import cli


@dataclasses.dataclass
class Greeting:
    name: str = dataclasses.field(default="world", metadata={"help": "who is greeted"})
    times: int = dataclasses.field(default=1, metadata={"help": "how often", "type": cli.positive_int})


def _add_greet_arguments(p):
    p.description = "Greet someone."
    cli.add_config_argument(p, Greeting)


def _greet(args):
    settings = cli._settings(args, Greeting)
    print(" ".join([f"hello {settings.name}"] * settings.times))
    return 0


def test_a_new_command_is_one_registry_entry(monkeypatch, capsys):
    """One entry gives the line in `mathloop --help`, the flags made from its settings class (with --config and
    --quiet), the run, and the one-line error of a bad value."""
    monkeypatch.setitem(cli.COMMANDS, "greet", cli.Command("greet someone", _add_greet_arguments, _greet))
    assert "greet someone" in " ".join(cli.build_parser("greet").format_help().split())
    assert cli.main(["greet", "--name", "you", "--times", "2", "--quiet"]) == 0
    assert capsys.readouterr().out == "hello you hello you\n"
    greet = cli.build_parser("greet")._subparsers._group_actions[0].choices["greet"]
    assert {"--config", "--name", "--times", "--quiet"} <= set(greet._option_string_actions)
    assert "how often (default: 1)" in " ".join(greet.format_help().split())
    with pytest.raises(SystemExit) as e:
        cli.main(["greet", "--times", "0"])
    assert e.value.code == 2
    assert "argument --times: must be >= 1, got 0" in capsys.readouterr().err


def test_every_command_is_listed_once_with_its_help():
    parser = cli.build_parser("exec")  # every command is listed; only exec (cheap to import) gets its flags
    commands = parser._subparsers._group_actions[0]
    assert list(commands.choices) == list(cli.COMMANDS)
    assert [action.help for action in commands._choices_actions] == [c.help for c in cli.COMMANDS.values()]
