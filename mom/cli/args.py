"""Argument parsing shared by every command: one-line argparse errors, and ``--model.FIELD`` / ``--train.FIELD``
overrides (light: no torch, so ``mom --help`` stays fast)."""

from __future__ import annotations

import argparse

from mom.errors import MomError


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each option's default, where there is one to show: not for flags (their default is off), not
    for ``None`` (no value: the help says what happens then), and not where the help already says its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        nothing = action.default is None or action.default is False or action.default == [] \
            or action.default is argparse.SUPPRESS  # (identity: a default of 0 is shown)
        if (nothing or "default" in text.lower()
                or "%(default)" in text or not (action.option_strings or action.nargs in ("?", "*"))):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """argparse, but errors are one line (no usage dump) with a pointer to --help."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise MomError(f"{message} (see '{self.prog} --help')")


def split_overrides(extra: list[str], allowed: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """Parse ``--model.top_k 2`` / ``--model.top_k=2`` style arguments left over by argparse."""
    out: dict[str, dict[str, str]] = {g: {} for g in allowed}
    i = 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--") or "." not in arg:
            raise MomError(f"unrecognized argument '{arg}'")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(extra):
                raise MomError(f"{arg} needs a value")
            value = extra[i + 1]
            i += 1
        group, _, field = key.partition(".")
        if group not in allowed or not field:
            hint = (f"overrides look like {' or '.join(f'--{g}.FIELD VALUE' for g in allowed)}" if allowed
                    else "this command takes no --model./--train. overrides")
            raise MomError(f"unrecognized argument '{arg}' ({hint})")
        out[group][field] = value
        i += 1
    return out
