"""`python -m mamf.data.builders NAME OUT [option=value ...]`: build one dataset folder.

Values are read as JSON when they parse (60, null, true, "x"), else as plain strings.
"""

from __future__ import annotations

import argparse
import json
import sys

from mamf.data.builders import BUILDERS, build, builder_options
from mamf.system.errors import MamfError


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mamf.data.builders", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", choices=sorted(BUILDERS), help="which dataset to build")
    ap.add_argument("out", help="the dataset folder to create")
    ap.add_argument("options", nargs="*", metavar="option=value",
                    help="builder options, e.g. per_class=60 seed=0")
    args = ap.parse_args(argv)
    try:
        options = {}
        for item in args.options:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise MamfError(f"options are written option=value, not {item!r} "
                                f"(options of {args.name}: {', '.join(builder_options(args.name))})")
            options[key.replace("-", "_")] = _value(value)
        build(args.name, args.out, **options)
    except MamfError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
