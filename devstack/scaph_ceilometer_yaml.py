"""Edits Ceilometer's YAML files for the scaph-openstack devstack plugin.

    scaph_ceilometer_yaml.py polling|gnocchi-resources|pipeline \\
        add|remove OURS TARGET [BASE]

plugin.sh runs it (_scaph_edit_polling, _scaph_edit_gnocchi_resources,
_scaph_edit_pipeline) after its own checks; the comments there say what
each edit does. OURS is our file (etc/ceilometer/...), TARGET the file in
$CEILOMETER_CONF_DIR, BASE Ceilometer's default that the edit starts from
when TARGET does not exist yet (polling and gnocchi-resources). Every edit
is idempotent: applying it twice changes nothing, and an unchanged file is
not rewritten. Standard library and PyYAML only.
"""

import copy
import fnmatch
import os
import sys
import urllib.parse

import yaml


def load(start):
    """The document of the file start ({} if it is empty)."""
    with open(start) as f:
        return yaml.safe_load(f) or {}


def write_if_changed(doc, new, start, target):
    """Writes new to target (atomically) unless nothing changed."""
    if new == doc and start == target:
        return           # nothing to change: leave the file as it is
    tmp = target + '.scaph-tmp'
    with open(tmp, 'w') as f:
        f.write('---\n')
        yaml.safe_dump(new, f, default_flow_style=False, sort_keys=False)
    os.replace(tmp, target)


def edit_polling(action, ours_path, target, base):
    """Our polling sources in or out of polling.yaml, by source name."""
    ours = load(ours_path).get('sources') or []
    names = {source['name'] for source in ours}
    # No polling.yaml yet: start from Ceilometer's own default, not from
    # nothing, which would drop its meters.
    start = target if os.path.exists(target) else base
    doc = load(start) if os.path.exists(start) else {}
    new = copy.deepcopy(doc)
    sources = [s for s in new.get('sources') or []
               if s.get('name') not in names]
    if action == 'add':
        sources.extend(ours)
    new['sources'] = sources
    write_if_changed(doc, new, start, target)


def edit_gnocchi_resources(action, ours_path, target, base):
    """Our archive policies and resource entries in or out of
    gnocchi_resources.yaml."""
    ours = load(ours_path)
    our_resources = ours.get('resources') or []
    our_policies = ours.get('archive_policies') or []
    # The meters of our file; an entry whose metrics are all of them is
    # ours (Ceilometer's metrics may be a list or a mapping).
    meters = {m for r in our_resources for m in r.get('metrics') or ()}
    policy_names = {p['name'] for p in our_policies}

    def is_our_policy(policy):
        name = str(policy.get('name'))
        return name in policy_names or name.startswith('scaph-')

    def is_ours(resource):
        names = set(resource.get('metrics') or ())
        return bool(names) and names <= meters

    # (plugin.sh has checked that one of them exists: a file with our
    # entries alone would drop every Ceilometer meter)
    start = target if os.path.exists(target) else base
    doc = load(start)
    new = copy.deepcopy(doc)
    policies = [p for p in new.get('archive_policies') or []
                if not is_our_policy(p)]
    resources = [r for r in new.get('resources') or [] if not is_ours(r)]
    if action == 'add':
        policies.extend(our_policies)
        resources.extend(our_resources)
    if policies or 'archive_policies' in new:
        new['archive_policies'] = policies
    new['resources'] = resources
    write_if_changed(doc, new, start, target)


PIPELINE_SOURCE, PIPELINE_SINK = 'scaph_meters', 'scaph_sink'


def _supported(entries, meter):
    # ceilometer.agent.Source.is_supported
    if any(fnmatch.fnmatch(meter, e[1:]) for e in entries if e[0] == '!'):
        return False
    if any(fnmatch.fnmatch(meter, e) for e in entries if e[0] != '!'):
        return True
    return all(e.startswith('!') for e in entries)


def _split_policy(url):
    """(url without archive_policy, whether it had one) of a gnocchi://."""
    base, _, query = url.partition('?')
    if not base.startswith('gnocchi:'):
        return url, False
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    kept = [(k, v) for k, v in pairs if k != 'archive_policy']
    if len(kept) == len(pairs):
        return url, False
    # (urlunsplit would write "gnocchi:?...": no host, no "//")
    return base + ('?' + urllib.parse.urlencode(kept) if kept else ''), True


def edit_pipeline(action, ours_path, target):
    """Our pipeline.yaml source, sink and exclusions in or out."""
    ours = load(ours_path)
    meters = sorted({m for r in ours.get('resources') or []
                     for m in r.get('metrics') or ()})
    excludes = ['!' + m for m in meters]
    # (plugin.sh returns before this without a pipeline.yaml)
    doc = load(target)
    new = copy.deepcopy(doc)
    # Ours out first: our source and sink, our exclusions.
    sources = [s for s in new.get('sources') or []
               if s.get('name') != PIPELINE_SOURCE]
    sinks = [s for s in new.get('sinks') or []
             if s.get('name') != PIPELINE_SINK]
    for source in sources:
        if source.get('meters'):
            source['meters'] = [m for m in source['meters']
                                if m not in excludes]
    if action == 'add':
        reached = {}                  # source name -> our meters it matches
        for source in sources:
            matched = [m for m in meters
                       if _supported(source.get('meters') or [], m)]
            if matched:
                reached[source['name']] = matched
        sink_names = [n for s in sources if s['name'] in reached
                      for n in s.get('sinks') or []]
        publishers, overridden = [], False
        for sink in sinks:
            if sink.get('name') not in sink_names:
                continue
            for url in sink.get('publishers') or []:
                url, had = _split_policy(url)
                overridden = overridden or had
                if url not in publishers:
                    publishers.append(url)
        separable = all(
            '*' in s['meters'] or any(m.startswith('!') for m in s['meters'])
            for s in sources if s['name'] in reached)
        if overridden and not separable:
            sys.stderr.write(
                'scaph-openstack: %s: a source lists our meters by name or '
                'pattern; left as it is: their Gnocchi metrics take the '
                "publisher's archive_policy\n" % target)
        elif overridden:
            for source in sources:
                for meter in reached.get(source['name'], ()):
                    source['meters'].append('!' + meter)
            ours_meters = [m for m in meters
                           if any(m in v for v in reached.values())]
            sources.append({'name': PIPELINE_SOURCE, 'meters': ours_meters,
                            'sinks': [PIPELINE_SINK]})
            sinks.append({'name': PIPELINE_SINK, 'publishers': publishers})
    new['sources'] = sources
    new['sinks'] = sinks
    write_if_changed(doc, new, target, target)


EDITS = {
    # kind: (function, number of paths after the action)
    'polling': (edit_polling, 3),
    'gnocchi-resources': (edit_gnocchi_resources, 3),
    'pipeline': (edit_pipeline, 2),
}


def main(argv):
    usage = ('usage: %s polling|gnocchi-resources|pipeline add|remove '
             'OURS TARGET [BASE]\n' % os.path.basename(argv[0]))
    if len(argv) < 3 or argv[1] not in EDITS or argv[2] not in (
            'add', 'remove'):
        sys.stderr.write(usage)
        return 2
    edit, npaths = EDITS[argv[1]]
    paths = argv[3:]
    if len(paths) != npaths:
        sys.stderr.write(usage)
        return 2
    edit(argv[2], *paths)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
