#!/usr/bin/env python3
"""Copies the current definitions of SQL functions into the upgrade script.

Usage: python3 scripts/upgrade-sql.py [--script FILE] NAME...

For each function NAME of schema spock, takes its definition (CREATE FUNCTION
... through the line ending with `$$;`) from sql/spock_catalog.sql or
sql/api/*.sql and writes it into the upgrade script (default: the newest
spock-pgext/sql/spock--0.1.0--*.sql): in place of the block already there for
NAME, or appended at the end. A function that exists in spock--0.1.0.sql is
written as CREATE OR REPLACE. New functions still need their REVOKE line (the
privilege blocks of sql/api/privileges.sql do not run on upgrade): the upgrade
test (tests/tests/upgrade.rs) reports what differs.
"""
import glob
import re
import sys

ROOT = __file__.rsplit("/scripts/", 1)[0]


def block(text, name):
    """(start, end) of the CREATE [OR REPLACE] FUNCTION spock.NAME( block in text."""
    m = re.search(r"^CREATE (OR REPLACE )?FUNCTION spock\.%s\(" % re.escape(name), text, re.M)
    if not m:
        return None
    end = re.compile(r"^\$[a-z_]*\$;\s*$", re.M).search(text, m.end())
    if not end:
        sys.exit(f"no end of the definition of {name}")
    return m.start(), end.end()


def main(args):
    script = None
    if args[:1] == ["--script"]:
        script, args = args[1], args[2:]
    script = script or sorted(glob.glob(f"{ROOT}/spock-pgext/sql/spock--0.1.0--*.sql"))[-1]
    sources = [f"{ROOT}/sql/spock_catalog.sql"] + sorted(glob.glob(f"{ROOT}/sql/api/*.sql"))
    original = open(f"{ROOT}/spock-pgext/sql/spock--0.1.0.sql").read()
    upgrade = open(script).read()
    for name in args:
        found = None
        for src in sources:
            text = open(src).read()
            b = block(text, name)
            if b:
                found = text[b[0]:b[1]]
                break
        if not found:
            sys.exit(f"function spock.{name} not found in sql/")
        verb = "CREATE OR REPLACE FUNCTION" if block(original, name) else "CREATE FUNCTION"
        found = re.sub(r"^CREATE (OR REPLACE )?FUNCTION", verb, found)
        b = block(upgrade, name)
        if b:
            upgrade = upgrade[:b[0]] + found + upgrade[b[1]:]
            print(f"replaced spock.{name}")
        else:
            upgrade = upgrade.rstrip("\n") + "\n\n" + found + "\n"
            print(f"appended spock.{name} ({verb})")
    open(script, "w").write(upgrade)


if __name__ == "__main__":
    main(sys.argv[1:])
