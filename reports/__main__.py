import argparse
import sys

from reports import compare, html


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m reports")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="write report.html for a results directory")
    build.add_argument("directory")
    build.add_argument("-o", "--out")
    cmp = sub.add_parser("compare", help="per-cell time ratios with bootstrap CIs; exit 1 on a regression")
    cmp.add_argument("baseline")
    cmp.add_argument("candidate")
    cmp.add_argument("--threshold", type=float, default=1.10, help="fail when a significant ratio exceeds this")
    args = parser.parse_args()
    if args.command == "build":
        print(html.build(args.directory, args.out))
        return 0
    table, code = compare.compare(args.baseline, args.candidate, args.threshold)
    print(table.to_string(index=False))
    print(f"# {int((table['verdict'] == 'slower').sum())} slower, {int((table['verdict'] == 'faster').sum())} faster,"
          f" threshold {args.threshold}: exit {code}")
    return code


sys.exit(main())
