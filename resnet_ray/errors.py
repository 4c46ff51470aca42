"""Errors a user can fix: the CLI prints them without a traceback and exits with 2."""


class UserError(Exception):
    """Bad input (file, key, field or option) with a message that says what was expected."""

    exit_code = 2


class DataError(UserError):
    """A data file or image folder is missing, malformed or inconsistent."""


class ConfigError(UserError):
    """A configuration value or file is invalid."""


class ModelDirError(UserError):
    """An exported model directory is missing, incomplete or inconsistent."""


class ClusterError(UserError):
    """The Ray cluster named by RAY_ADDRESS cannot be joined."""


class RunFailed(Exception):
    """A training or tuning run failed beyond its retries; its checkpoints are kept."""

    exit_code = 1


class CheckpointError(UserError):
    """A training checkpoint is incomplete or damaged."""


# What a user does after Ctrl-C, per command; a run keeps what it wrote.
RESUME_HINT = {"train": "run the same command again to resume",
               "tune": "run the same command with --resume to continue the search"}


def run_command(func, args, command: str) -> int:
    """Run a command; a user's error or a failed run becomes one line on stderr and an exit
    status (2 for bad input), never a traceback."""
    import sys

    try:
        func(args)
    except (UserError, RunFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        how = RESUME_HINT.get(command)
        print(f"interrupted; checkpoints written so far are kept: {how}" if how
              else "interrupted", file=sys.stderr)
        return 130
    return 0


def parser_class():
    """argparse's parser whose errors are one line, as every other error of a command is
    (argparse's own prints the whole usage first: twenty lines for train)."""
    import argparse
    import sys

    class Parser(argparse.ArgumentParser):
        def error(self, message):
            print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
            sys.exit(UserError.exit_code)

    return Parser


def command_main(name: str, description: str, add_arguments, command, argv=None) -> int:
    """`python -m resnet_ray.NAME ...`: one command's parser and run, without the CLI."""
    parser = parser_class()(prog=f"python -m resnet_ray.{name}", description=description)
    add_arguments(parser)
    return run_command(command, parser.parse_args(argv), name)
