"""Recognise ncc v0.1 command lines and say what to type instead.

Tutorials and Maix_Toolbox still teach the v0.1 syntax (ecosystem.md §1.1, §1.4), and pasting it into
ncc v0.2 gives a bare usage error (§2 P7: nncase#180, #218). kcc recognises it and answers with the
equivalent v0.2 / kcc command line, in one `error:` line:

    ncc -i tflite -o k210model --dataset images [--postprocess n1to1] in.tflite out.kmodel
    -> kcc compile in.tflite out.kmodel -i tflite -o kmodel --dataset images [--input-mean 0.5 --input-std 0.5]

A v0.1 line is one with no subcommand in front, or any v0.1-only flag (`--postprocess`,
`--weights-bits`, `--float-fc`, `--channelwise-output`), or a v0.1 output format (`-o k210model`,
`-o inference`, ...).
"""

from __future__ import annotations

import shlex

from kcc.errors import KccError

COMMANDS = ("compile", "infer", "info")
V01_ONLY_FLAGS = ("--postprocess", "--weights-bits", "--float-fc", "--channelwise-output")
V01_OUTPUT_FORMATS = ("k210model", "inference", "tf", "tflite", "addpad")
_WITH_VALUE = {"-i", "--input-format", "-o", "--output-format", "--dataset", "--dataset-format", "--postprocess",
               "--weights-bits", "--inference-type", "--input-mean", "--input-std", "-t", "--target"}
_POSTPROCESS = {"0to1": [], "n1to1": ["--input-mean", "0.5", "--input-std", "0.5"]}


def _options(argv: list[str]) -> tuple[dict[str, str], list[str], list[str]]:
    """(flag -> value, bare flags, positionals) of a flat v0.1 argument list."""
    values: dict[str, str] = {}
    bare: list[str] = []
    positionals: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("-") and "=" in arg:
            flag, value = arg.split("=", 1)
            values[flag] = value
        elif arg in _WITH_VALUE and i + 1 < len(argv):
            values[arg] = argv[i + 1]
            i += 1
        elif arg.startswith("-"):
            bare.append(arg)
        else:
            positionals.append(arg)
        i += 1
    return values, bare, positionals


def is_legacy(argv: list[str]) -> bool:
    args = [a for a in argv if a != "--debug"]
    if not args or args[0] in ("-h", "--help", "-v", "--version"):
        return False
    if any(a.split("=")[0] in V01_ONLY_FLAGS for a in args):
        return True
    values, _, _ = _options(args)
    out_format = values.get("-o", values.get("--output-format"))
    if out_format in V01_OUTPUT_FORMATS and (args[0] not in COMMANDS or out_format != "tflite"):
        return True
    return args[0] not in COMMANDS and args[0].startswith("-") and any(a in ("-i", "--input-format") for a in args)


def equivalent(argv: list[str]) -> str:
    """The kcc command line that does what the v0.1 `argv` asked for, plus what was dropped."""
    values, bare, positionals = _options([a for a in argv if a not in COMMANDS[:1]])
    src = positionals[0] if positionals else "model.tflite"
    dst = positionals[1] if len(positionals) > 1 else "model.kmodel"
    in_format = values.get("-i", values.get("--input-format", "tflite"))
    out_format = values.get("-o", values.get("--output-format", "k210model"))
    dropped: list[str] = []
    if out_format == "inference" or in_format == "k210model":
        cmd = ["kcc", "infer", src, dst if len(positionals) > 1 else "out"]
    else:
        cmd = ["kcc", "compile", src, dst, "-i", in_format if in_format != "k210model" else "tflite", "-o", "kmodel"]
    if "--dataset" in values:
        cmd += ["--dataset", values["--dataset"]]
    post = values.get("--postprocess")
    if post in _POSTPROCESS:
        cmd += _POSTPROCESS[post]
    elif post and post.startswith("mean:"):
        parts = dict(p.split(":", 1) for p in post.split(",") if ":" in p)
        cmd += ["--input-mean", parts.get("mean", "0"), "--input-std", parts.get("std", "1")]
    passthrough = ["--input-mean", "--input-std", "--dataset-format"]
    if cmd[1] == "compile":
        passthrough.append("--inference-type")
    for flag in passthrough:
        if flag in values and flag not in cmd:
            cmd += [flag, values[flag]]
    if "--weights-bits" in values:
        dropped.append("--weights-bits (the KPU path is 8-bit)")
    if "--float-fc" in bare:
        dropped.append("--float-fc (small fully-connected heads stay float automatically)")
    if "--channelwise-output" in bare:
        dropped.append("--channelwise-output (weights are rescaled per output channel always)")
    text = " ".join(shlex.quote(c) for c in cmd)
    return text + (f"; dropped: {', '.join(dropped)}" if dropped else "")


def check(argv: list[str]) -> None:
    """Raise a one-line KccError with the kcc equivalent if `argv` is an ncc v0.1 command line."""
    if is_legacy(argv):
        raise KccError(f"this is an ncc v0.1 (kmodel v3) command line; kcc follows ncc v0.2 (kmodel v4). "
                       f"Use: {equivalent(argv)}")
