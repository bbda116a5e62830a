"""The command download_models.sh runs to plan its downloads (it prints; awm.suites.downloads decides).

    python -m awm.suites.download_command list
    python -m awm.suites.download_command missing SUITE|all [--checkpoint_dir DIR]   -> name<TAB>repo<TAB>folder
    python -m awm.suites.download_command files REPO                                 -> one file name per line
    python -m awm.suites.download_command complete FOLDER                            -> exit 0 when usable
"""
import argparse
import sys

from awm.errors import AwmError
from awm.suites import configs
from awm.suites.downloads import is_complete, list_repo_files, missing, select_files


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("list", "missing", "files", "complete"))
    parser.add_argument("target", nargs="?")
    parser.add_argument("--checkpoint_dir")
    args = parser.parse_args(argv)
    if args.command == "list":
        print(configs.describe_suites())
        print("  all                      every model of every suite")
        return 0
    if not args.target:
        parser.error(f"{args.command} needs a {'suite' if args.command == 'missing' else 'repo'}")
    if args.command == "complete":
        return 0 if is_complete(args.target) else 1
    if args.command == "missing":
        try:
            rows = missing(args.target, args.checkpoint_dir)
        except AwmError as err:
            print(err, file=sys.stderr)
            return 2
        for row in rows:
            print("\t".join(row))
        return 0
    try:
        files = select_files(list_repo_files(args.target))
    except Exception as err:  # network, auth or a repo that does not exist
        print(f"cannot list {args.target}: {err.__class__.__name__}: {str(err).splitlines()[0] if str(err) else ''}", file=sys.stderr)
        return 3
    if not files:
        print(f"{args.target} has no safetensors or pytorch_model*.bin weights at its top level", file=sys.stderr)
        return 4
    print("\n".join(files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
