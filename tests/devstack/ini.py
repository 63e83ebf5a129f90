"""INI editing with devstack's semantics, for the fake iniset/iniget/...

Like devstack's inc/ini-config (sed over the file, comments kept):

- an option is a line ``option = value`` starting at column 0 inside
  ``[section]`` (commented lines do not count);
- ``set`` appends ``[section]`` at the end when it is missing, replaces
  every existing ``option = ...`` line of the section, else inserts the
  option right after the section header; the file is created if missing;
- ``get`` prints the value of the first such line (empty if none);
- ``delete`` removes every such line of the section;
- ``has`` exits 0 when the option is set, 1 when not.

Usage: ini.py set FILE SECTION OPTION VALUE | get|delete|has FILE SECTION
OPTION
"""

import os
import re
import sys


def _read(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return f.read().splitlines()


def _write(path, lines):
    with open(path, 'w') as f:
        f.write(''.join(line + '\n' for line in lines))


def _is_header(line, section=None):
    match = re.match(r'^\[(.*)\]', line)
    return bool(match) and (section is None or match.group(1) == section)


def _option_re(option):
    return re.compile(r'^%s[ \t]*=' % re.escape(option))


def _section_lines(lines, section):
    """Indexes of the lines inside every [section] block."""
    inside = False
    for index, line in enumerate(lines):
        if _is_header(line):
            inside = _is_header(line, section)
            continue
        if inside:
            yield index


def get(lines, section, option):
    pattern = _option_re(option)
    for index in _section_lines(lines, section):
        if pattern.match(lines[index]):
            return lines[index].split('=', 1)[1].strip()
    return None


def set_(lines, section, option, value):
    pattern = _option_re(option)
    if not any(_is_header(line, section) for line in lines):
        lines += ['', '[%s]' % section]
    found = [i for i in _section_lines(lines, section)
             if pattern.match(lines[i])]
    for index in found:
        lines[index] = '%s = %s' % (option, value)
    if not found:
        header = next(i for i, line in enumerate(lines)
                      if _is_header(line, section))
        lines.insert(header + 1, '%s = %s' % (option, value))
    return lines


def delete(lines, section, option):
    pattern = _option_re(option)
    drop = {i for i in _section_lines(lines, section)
            if pattern.match(lines[i])}
    return [line for i, line in enumerate(lines) if i not in drop]


def main(argv):
    command, path, section, option = argv[:4]
    lines = _read(path)
    if command == 'set':
        _write(path, set_(lines, section, option, argv[4]))
    elif command == 'delete':
        if os.path.exists(path):
            _write(path, delete(lines, section, option))
    elif command == 'get':
        value = get(lines, section, option)
        print('' if value is None else value)
    elif command == 'has':
        return 0 if get(lines, section, option) is not None else 1
    else:
        raise SystemExit('unknown command %r' % command)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
