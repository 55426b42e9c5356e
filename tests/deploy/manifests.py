"""Readers for the deployment files, for tests that run without Docker: the compose file with
Compose's own variable interpolation, `.env.example`, and Dockerfiles as instruction lists."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERIGNORE = REPO / ".dockerignore"

# $$ (a literal $), ${EXPR} or $NAME, as Compose reads them.
_REFERENCE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)
_EXPRESSION = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?", re.S)


class MissingVariable(Exception):
    """A ${VAR:?message} or ${VAR?message} whose variable is not set."""


@dataclass(frozen=True)
class Reference:
    name: str
    op: str | None  # None, "-", ":-", "?", ":?", "+", ":+"
    arg: str | None


def references(text: str) -> list[Reference]:
    """Every variable reference in a string, escaped dollars left out."""
    out = []
    for match in _REFERENCE.finditer(text):
        if match.group("escaped"):
            continue
        expression = match.group("braced")
        if expression is None:
            expression = match.group("named")
        parsed = _EXPRESSION.fullmatch(expression)
        if parsed is None:
            raise ValueError(f"not a variable reference Compose understands: ${{{expression}}}")
        out.append(Reference(parsed["name"], parsed["op"], parsed["arg"]))
    return out


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Substitute variables the way `docker compose` does, in every string of a loaded file."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        (ref,) = references(match.group(0))
        current = env.get(ref.name)
        is_set, non_empty = current is not None, bool(current)
        if ref.op in (":-", "-"):
            return current if (non_empty if ref.op == ":-" else is_set) else (ref.arg or "")
        if ref.op in (":?", "?"):
            if not (non_empty if ref.op == ":?" else is_set):
                raise MissingVariable(f"{ref.name}: {ref.arg}")
            return current or ""
        if ref.op in (":+", "+"):
            return (ref.arg or "") if (non_empty if ref.op == ":+" else is_set) else ""
        return current or ""

    return _REFERENCE.sub(substitute, value)


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def read_env_file(path: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    """KEY=VALUE lines, and the comment lines right above each key."""
    values: dict[str, str] = {}
    comments: dict[str, list[str]] = {}
    pending: list[str] = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line:
            pending = []
        elif line.startswith("#"):
            text = line.lstrip("#").strip()
            if text and not set(text) <= set("-"):
                pending.append(text)
        else:
            key, sep, value = line.partition("=")
            if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"{path.name}: not a KEY=VALUE line: {raw!r}")
            values[key] = value
            comments[key] = pending
            pending = []
    return values, comments


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    arguments: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array of CMD, ENTRYPOINT, COPY... in exec form, else None."""
        if not self.arguments.startswith("["):
            return None
        value = json.loads(self.arguments)
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise ValueError(f"line {self.line}: not a JSON array of strings: {self.arguments}")
        return value


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined and comment lines dropped."""
    instructions: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment lines, also inside a continued instruction
        if not parts:
            start = number
        continued = line.endswith("\\")
        parts.append(line[:-1].strip() if continued else line)
        if not continued:
            keyword, _, arguments = " ".join(parts).partition(" ")
            instructions.append(Instruction(keyword.upper(), arguments.strip(), start))
            parts = []
    if parts:
        raise ValueError(f"{path}: the file ends inside a continued instruction")
    return instructions


def copy_sources(instruction: Instruction) -> list[str] | None:
    """The sources of a COPY or ADD from the build context; None for COPY --from=<stage>."""
    words = instruction.exec_form() or shlex.split(instruction.arguments)
    flags = [w for w in words if w.startswith("--")]
    if any(flag.startswith("--from=") for flag in flags):
        return None
    paths = [w for w in words if not w.startswith("--")]
    if len(paths) < 2:
        raise ValueError(f"line {instruction.line}: {instruction.keyword} needs a source, a target")
    return paths[:-1]


def dockerignore_patterns() -> list[tuple[bool, str]]:
    """(is_exception, pattern) in file order; the last matching pattern wins."""
    out = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        out.append((negated, line.lstrip("!").strip("/")))
    return out


def is_ignored(path: str, patterns: list[tuple[bool, str]]) -> bool:
    """Whether .dockerignore leaves `path` (relative to the context) out of the build context.
    A path is left out when it, or a folder above it, matches (Go's filepath.Match plus **)."""
    parts = Path(path.strip("/")).parts
    ignored = False
    for negated, pattern in patterns:
        regex = _glob_to_regex(pattern)
        if any(regex.fullmatch("/".join(parts[: i + 1])) for i in range(len(parts))):
            ignored = not negated
    return ignored


def _glob_to_regex(pattern: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out.append(pattern[i : end + 1])
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


@dataclass(frozen=True)
class Image:
    """The final stage of a Dockerfile: its base, instructions, ENV, ENTRYPOINT and CMD."""

    path: Path
    context: Path
    instructions: list[Instruction]

    @property
    def final_stage(self) -> list[Instruction]:
        starts = [i for i, ins in enumerate(self.instructions) if ins.keyword == "FROM"]
        return self.instructions[starts[-1] :]

    @property
    def base(self) -> str:
        return self.final_stage[0].arguments.split()[0]

    def last(self, keyword: str) -> Instruction | None:
        found = [ins for ins in self.final_stage if ins.keyword == keyword]
        return found[-1] if found else None

    def exec_form(self, keyword: str) -> list[str] | None:
        ins = self.last(keyword)
        if ins is None:
            return None
        form = ins.exec_form()
        assert form is not None, (
            f"{self.path.name}: {keyword} must be in exec form (JSON), so "
            "signals reach hpsearch instead of a shell"
        )
        return form

    @property
    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for ins in self.final_stage:
            if ins.keyword == "ENV":
                for word in shlex.split(ins.arguments):
                    key, _, value = word.partition("=")
                    out[key] = value
        return out

    def pip_installs(self) -> list[list[str]]:
        """The words of every `pip install` command in a RUN instruction, in any stage."""
        out = []
        for ins in self.instructions:
            if ins.keyword != "RUN":
                continue
            for words in shell_commands(ins.arguments):
                for i in range(len(words) - 1):
                    if words[i].endswith("pip") and words[i + 1] == "install":
                        out.append(words[i + 2 :])
                    elif words[i : i + 3] == ["-m", "pip", "install"]:
                        out.append(words[i + 3 :])
        return out


def shell_commands(script: str) -> list[list[str]]:
    """The words of each simple command in a shell line, split at &&, ||, ; and |."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", "||", ";", "|", "&"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


# --- services


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def mounts(service: dict[str, Any], declared: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, is_named_volume) of each volume of a service; `declared` is the
    file's top-level volumes."""
    out = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            source, target = volume.get("source", ""), volume["target"]
        else:
            source, _, rest = volume.partition(":")
            target = rest.partition(":")[0]
        named = bool(source) and not source.startswith((".", "/", "~", "$"))
        if named and source not in declared:
            raise ValueError(f"volume {source} is not declared under the top-level volumes")
        out.append((source, target, named))
    return out


def under_a_mount(path: str, targets: list[str]) -> bool:
    return any(PurePosixPath(path).is_relative_to(target) for target in targets)


def gpu_requests(service: dict[str, Any]) -> list[dict[str, Any]]:
    resources = (service.get("deploy") or {}).get("resources") or {}
    return (resources.get("reservations") or {}).get("devices") or []
