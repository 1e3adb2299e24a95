"""Decodes a pprof profile with Google's protobuf library, independently of eventflux-probe's
encoder: the schema below is built from the field numbers of google/pprof's profile.proto
(perftools.profiles), and parsing fails on any field of the wrong wire type. Prints a JSON
summary for the test to check: sample types, period, totals by label, the leaf function of
the most samples, and every inconsistency found (dangling ids, string indexes out of range).

Usage: python3 pprof_check.py PROFILE
"""

import collections
import json
import sys

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

F = descriptor_pb2.FieldDescriptorProto


def message(fd, name, fields):
    m = fd.message_type.add(name=name)
    for number, (fname, ftype, repeated, type_name) in enumerate(fields):
        if fname is None:
            continue
        f = m.field.add(name=fname, number=number + 1, type=ftype)
        f.label = F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL
        if type_name:
            f.type_name = ".perftools.profiles." + type_name


def schema():
    fd = descriptor_pb2.FileDescriptorProto(name="profile.proto", package="perftools.profiles", syntax="proto3")
    message(fd, "Profile", [
        ("sample_type", F.TYPE_MESSAGE, True, "ValueType"),
        ("sample", F.TYPE_MESSAGE, True, "Sample"),
        ("mapping", F.TYPE_MESSAGE, True, "Mapping"),
        ("location", F.TYPE_MESSAGE, True, "Location"),
        ("function", F.TYPE_MESSAGE, True, "Function"),
        ("string_table", F.TYPE_STRING, True, None),
        ("drop_frames", F.TYPE_INT64, False, None),
        ("keep_frames", F.TYPE_INT64, False, None),
        ("time_nanos", F.TYPE_INT64, False, None),
        ("duration_nanos", F.TYPE_INT64, False, None),
        ("period_type", F.TYPE_MESSAGE, False, "ValueType"),
        ("period", F.TYPE_INT64, False, None),
        ("comment", F.TYPE_INT64, True, None),
        ("default_sample_type", F.TYPE_INT64, False, None),
    ])
    message(fd, "ValueType", [("type", F.TYPE_INT64, False, None), ("unit", F.TYPE_INT64, False, None)])
    message(fd, "Sample", [
        ("location_id", F.TYPE_UINT64, True, None),
        ("value", F.TYPE_INT64, True, None),
        ("label", F.TYPE_MESSAGE, True, "Label"),
    ])
    message(fd, "Label", [
        ("key", F.TYPE_INT64, False, None),
        ("str", F.TYPE_INT64, False, None),
        ("num", F.TYPE_INT64, False, None),
        ("num_unit", F.TYPE_INT64, False, None),
    ])
    message(fd, "Mapping", [
        ("id", F.TYPE_UINT64, False, None),
        ("memory_start", F.TYPE_UINT64, False, None),
        ("memory_limit", F.TYPE_UINT64, False, None),
        ("file_offset", F.TYPE_UINT64, False, None),
        ("filename", F.TYPE_INT64, False, None),
        ("build_id", F.TYPE_INT64, False, None),
        ("has_functions", F.TYPE_BOOL, False, None),
        ("has_filenames", F.TYPE_BOOL, False, None),
        ("has_line_numbers", F.TYPE_BOOL, False, None),
        ("has_inline_frames", F.TYPE_BOOL, False, None),
    ])
    message(fd, "Location", [
        ("id", F.TYPE_UINT64, False, None),
        ("mapping_id", F.TYPE_UINT64, False, None),
        ("address", F.TYPE_UINT64, False, None),
        ("line", F.TYPE_MESSAGE, True, "Line"),
        ("is_folded", F.TYPE_BOOL, False, None),
    ])
    message(fd, "Line", [
        ("function_id", F.TYPE_UINT64, False, None),
        ("line", F.TYPE_INT64, False, None),
        ("column", F.TYPE_INT64, False, None),
    ])
    message(fd, "Function", [
        ("id", F.TYPE_UINT64, False, None),
        ("name", F.TYPE_INT64, False, None),
        ("system_name", F.TYPE_INT64, False, None),
        ("filename", F.TYPE_INT64, False, None),
        ("start_line", F.TYPE_INT64, False, None),
    ])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("perftools.profiles.Profile"))


def main(path):
    profile = schema()()
    with open(path, "rb") as f:
        profile.ParseFromString(f.read())
    strings = list(profile.string_table)
    problems = []
    if not strings or strings[0] != "":
        problems.append("string_table[0] is not empty")

    def s(i):
        if 0 <= i < len(strings):
            return strings[i]
        problems.append(f"string index {i} out of range")
        return "?"

    functions = {f.id: s(f.name) for f in profile.function}
    locations = {}
    for loc in profile.location:
        names = []
        for line in loc.line:
            if line.function_id not in functions:
                problems.append(f"location {loc.id}: no function {line.function_id}")
            names.append(functions.get(line.function_id, "?"))
        locations[loc.id] = names
    by_label = collections.Counter()
    leaves = collections.Counter()
    total = [0] * len(profile.sample_type)
    for sample in profile.sample:
        if len(sample.value) != len(profile.sample_type):
            problems.append("a sample has as many values as there are sample types")
        for i, v in enumerate(sample.value[: len(total)]):
            total[i] += v
        labels = {s(l.key): s(l.str) for l in sample.label}
        by_label[f"{labels.get('query_id')}/{labels.get('stage')}"] += sample.value[0]
        for lid in sample.location_id:
            if lid not in locations:
                problems.append(f"a sample names location {lid}, which does not exist")
        if sample.location_id and sample.location_id[0] in locations:
            # Leaf location first; in it, the innermost inlined function first and the
            # function whose machine code it is last.
            leaves[locations[sample.location_id[0]][-1]] += sample.value[0]
    print(json.dumps({
        "sample_types": [[s(t.type), s(t.unit)] for t in profile.sample_type],
        "period_type": [s(profile.period_type.type), s(profile.period_type.unit)],
        "period": profile.period,
        "totals": total,
        "by_label": by_label,
        "top_leaf_function": leaves.most_common(1)[0] if leaves else None,
        "functions": sorted(set(functions.values())),
        "problems": problems,
    }))


if __name__ == "__main__":
    main(sys.argv[1])
