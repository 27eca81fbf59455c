#!/usr/bin/env python3
"""Helpers of scripts/symbol-order.sh (standard library only).

  link-order.py siblings BINARY < NAMES > NAMES
      Copies the list of function names, each preceded by the variants of it
      the binary holds for other CPUs. The profiles are taken under valgrind,
      whose virtual CPU has no VAES, AVX-512 or ADX: there the crypto
      libraries pick their AES-NI GCM and s2n-bignum's `_alt` X25519, while a
      daemon on a current CPU runs the VAES/AVX2 GCM and the ADX X25519
      instead. Listing both keeps whichever runs beside the rest of the hot
      code.

  link-order.py rodata BINARY MAP RUNNING STARTUP [PERF_SCRIPT...] > PATTERNS
      The read-only data the listed functions refer to, as input section
      patterns of a linker script (platform/linker/build.rs puts them in an
      output section of their own, `.rodata.hot`, after `.rodata`). MAP is
      the binary's link map (`-Wl,-Map=`): it names every input section, also
      those of constants without a symbol (`.rodata..Lanon.*`, jump tables),
      which a symbol ordering file cannot move. A function's references are
      the addresses its instructions name (objdump's `# address` notes):
      jump tables, lookup tables, strings. What the running daemons' code
      refers to comes first, then the data page faults of native runs
      touched once set up (PERF_SCRIPT, as for `faults`: constants reached
      through code the profile did not run), then what start-up's code
      adds, then what only the functions valgrind ran in place of a
      variant refer to.

  link-order.py faults BINARY [--keep LIST] PERF_SCRIPT... > NAMES
      The functions of BINARY whose code page faults first brought in once
      each daemon had given back its start-up pages, in the order of the
      faults, from `perf script --show-mmap-events -F pid,event,addr,ip`
      of `perf record -c 1 -d -e page-faults -e syscalls:sys_exit_madvise`
      (the madvise calls of src/sys/file_pages.rs mark the end of start-up).
      A fault maps the cached pages around it as well, so each names the
      first function touched in a block: functions a native run reaches
      and the profile under valgrind did not. With --keep, the names an
      earlier list (agentnet.symbol-order) has under its "Running, reached
      only natively" comment come first, those the binary still has: once
      packed with the running code they fault no more on their own.
"""

import bisect
import os
import re
import subprocess
import sys

# (a function the profile names, the variant run on CPUs valgrind lacks)
SIBLINGS = [
    # s2n-bignum (aws-lc): the ADX/BMI2 variant of each `_alt` function.
    (re.compile(r"^(aws_lc_\w+)_alt$"), r"\1"),
    # ring: AES-GCM and GHASH with VAES/VPCLMULQDQ and AVX2.
    (re.compile(r"^(ring_core_\w+__)aesni_gcm_encrypt$"), r"\1aes_gcm_enc_update_vaes_avx2"),
    (re.compile(r"^(ring_core_\w+__)aesni_gcm_decrypt$"), r"\1aes_gcm_dec_update_vaes_avx2"),
    (re.compile(r"^(ring_core_\w+__)gcm_ghash_avx$"), r"\1gcm_ghash_vpclmulqdq_avx2_1"),
    (re.compile(r"^(ring_core_\w+__)gcm_init_avx$"), r"\1gcm_init_vpclmulqdq_avx2"),
]

# Sections every object has under the same name: merged (strings,
# constants of one size) or a whole C file's data. They cannot be picked
# out by name alone.
SHARED_NAME = re.compile(r"^\.rodata(\.(str|cst)[0-9.]*)?$")
# What a quoted section name in a linker script may hold here.
SAFE_NAME = re.compile(r"^\.rodata[A-Za-z0-9_.$]*$")
# `<dir>/libNAME-HASH.rlib(HASH-member.o)`: a C object inside a crate.
ARCHIVE_MEMBER = re.compile(r"/lib([A-Za-z0-9_]+)-[0-9a-f]+\.rlib\([0-9a-f]+-([A-Za-z0-9_.]+\.o)\)$")
# A line of the map: address, load address, size, alignment, then the
# name indented by 0 (output section), 8 (input section) or 16 (symbol).
MAP_LINE = re.compile(r"^\s*([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)\s+\d+ ( *)(\S.*)$")
FUNCTION = re.compile(r"^[0-9a-f]+ <(.+)>:$")
TARGET = re.compile(r"# ([0-9a-f]+)")


def symbol_names(binary):
    """Every symbol name of the binary."""
    out = subprocess.run(["nm", binary], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def siblings(binary):
    present = symbol_names(binary)
    seen = set()
    for line in sys.stdin:
        name = line.strip()
        # The variant first: it is what runs outside valgrind.
        candidates = [
            valgrind_path.sub(variant, name)
            for valgrind_path, variant in SIBLINGS
            if valgrind_path.match(name)
        ] + [name]
        for candidate in candidates:
            if candidate not in seen and (candidate == name or candidate in present):
                seen.add(candidate)
                print(candidate)


def rodata_sections(map_path):
    """(start, size, section, file) of each input section placed in the
    output sections `.rodata.hot` and `.rodata`, by address."""
    sections, inside = [], False
    for line in open(map_path, encoding="utf-8", errors="replace"):
        fields = MAP_LINE.match(line.rstrip("\n"))
        if not fields:
            continue
        start, size, indent, what = fields.groups()
        if not indent:
            inside = what in (".rodata", ".rodata.hot")
            continue
        if not inside or len(indent) != 8 or not what.endswith(")") or ":(" not in what:
            continue
        file, _, section = what.rpartition(":(")
        if int(size, 16):
            sections.append((int(start, 16), int(size, 16), section[:-1], file))
    sections.sort()
    return sections


def pattern(section, file):
    """The linker script input section pattern that picks this section
    out, or None."""
    if SHARED_NAME.match(section):
        member = ARCHIVE_MEMBER.search(file)
        if section != ".rodata" or not member:
            return None
        return f"*lib{member.group(1)}-*.rlib:*-{member.group(2)}(.rodata)"
    if not SAFE_NAME.match(section):
        return None
    return f'*("{section}")'


def read_names(path):
    with open(path, encoding="utf-8") as names:
        return [line.strip() for line in names if line.strip() and not line.startswith("#")]


def rodata(binary, map_path, running_path, startup_path, perf_scripts=()):
    sections = rodata_sections(map_path)
    if not sections:
        sys.exit(f"link-order: no .rodata input sections in {map_path}")
    starts = [start for start, _, _, _ in sections]
    rank = {}
    for name in read_names(running_path):
        rank.setdefault(name, len(rank))
    # Data the native runs read once set up ranks right after the running
    # code's, before start-up's.
    native_data = len(rank) - 0.5
    for name in read_names(startup_path):
        rank.setdefault(name, len(rank))
    # What valgrind ran in place of a listed variant comes last: outside
    # valgrind its data is not read.
    for name in list(rank):
        if any(valgrind_path.match(name) and valgrind_path.sub(variant, name) in rank
               for valgrind_path, variant in SIBLINGS):
            rank[name] += len(rank)
    low, high = sections[0][0], sections[-1][0] + sections[-1][1]

    # The first rank of a function that refers into each section.
    first_reference = {}

    def refer(address, by_rank):
        if not low <= address < high:
            return
        index = bisect.bisect_right(starts, address) - 1
        start, size, _, _ = sections[index]
        if start <= address < start + size:
            first_reference[index] = min(first_reference.get(index, by_rank), by_rank)

    current = None
    dump = subprocess.Popen(
        ["objdump", "-d", "--no-show-raw-insn", binary], stdout=subprocess.PIPE, text=True
    )
    for line in dump.stdout:
        function = FUNCTION.match(line)
        if function:
            current = rank.get(function.group(1))
            continue
        if current is None or "#" not in line:
            continue
        for target in TARGET.findall(line):
            refer(int(target, 16), current)
    if dump.wait() != 0:
        sys.exit("link-order: objdump failed")
    for address in running_faults(binary, perf_scripts):
        refer(address, native_data)

    written = set()
    for index in sorted(first_reference, key=lambda index: (first_reference[index], index)):
        _, _, section, file = sections[index]
        line = pattern(section, file)
        if line and line not in written:
            written.add(line)
            print(line)


# `PERF_RECORD_MMAP2 pid/tid: [0xSTART(0xLEN) @ OFFSET ...]: PROT PATH`
MMAP = re.compile(r"PERF_RECORD_MMAP2 (\d+)/\d+: \[0x([0-9a-f]+)\(0x[0-9a-f]+\) @ (0x[0-9a-f]+|0) .*\]: \S+ (\S+)$")
# `PID EVENT: ADDR IP ...` (perf prints the data address before the ip)
EVENT = re.compile(r"^\s*(\d+)\s+(page-faults|syscalls:sys_exit_madvise):\s+([0-9a-f]+)")
# The release's madvise calls come one per clean file mapping, a few page
# faults apart at most; later ones (a thread giving back its stack) are
# not part of it.
RELEASE_GAP = 8


def functions(binary):
    """(start, end, name) of every function symbol, by address."""
    out = subprocess.run(["nm", "-S", "--defined-only", binary], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        fields = line.split(None, 3)
        if len(fields) == 4 and fields[2] in "tTwW":
            start, size = int(fields[0], 16), int(fields[1], 16)
            if size:
                found.append((start, start + size, fields[3]))
    found.sort()
    return found


def release_ends(events):
    """For each process, the index in `events` of the last madvise of its
    release: the first madvise and those following it a few events apart."""
    ends = {}
    for index, (pid, kind, _) in enumerate(events):
        if kind == "page-faults":
            continue
        end = ends.get(pid)
        if end is None or (end[1] and index - end[0] <= RELEASE_GAP + 1):
            ends[pid] = (index, True)
        else:
            ends[pid] = (end[0], False)  # the release is over
    return {pid: index for pid, (index, _) in ends.items()}


def running_faults(binary, paths):
    """The addresses in BINARY (as linked) that page faults touched once
    each daemon had given back its start-up pages, in the order of the
    faults, from `perf script` texts."""
    path = os.path.realpath(binary)
    for perf_script in paths:
        base, events = {}, []
        with open(perf_script, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                mapping = MMAP.search(line)
                if mapping:
                    if mapping.group(4) == path and int(mapping.group(3), 16) == 0:
                        base.setdefault(int(mapping.group(1)), int(mapping.group(2), 16))
                    continue
                event = EVENT.match(line)
                if event:
                    events.append((int(event.group(1)), event.group(2), int(event.group(3), 16)))
        ends = release_ends(events)
        for index, (pid, kind, address) in enumerate(events):
            if kind == "page-faults" and pid in base and index > ends.get(pid, len(events)):
                yield address - base[pid]


def faults(binary, paths, keep=None):
    table = functions(binary)
    starts = [start for start, _, _ in table]
    seen = set()
    if keep:
        # A function packed with the running code no longer faults on its
        # own, so what earlier runs found stays listed while the binary has it.
        present = {name for _, _, name in table}
        for name in previous_native(keep):
            if name in present and name not in seen:
                seen.add(name)
                print(name)
    for address in running_faults(binary, paths):
        function = bisect.bisect_right(starts, address) - 1
        if function >= 0 and address < table[function][1]:
            name = table[function][2]
            if name not in seen:
                seen.add(name)
                print(name)


# The comment line of agentnet.symbol-order above the functions found by
# `faults` (scripts/symbol-order.sh writes it).
NATIVE_MARK = "# Running, reached only natively"


def previous_native(list_path):
    """The names under NATIVE_MARK in an earlier list, if any."""
    try:
        lines = open(list_path, encoding="utf-8").read().splitlines()
    except OSError:
        return []
    names, inside = [], False
    for line in lines:
        if line.startswith("#"):
            inside = line.startswith(NATIVE_MARK)
        elif inside and line.strip():
            names.append(line.strip())
    return names


def main(argv):
    if len(argv) == 3 and argv[1] == "siblings":
        siblings(argv[2])
    elif len(argv) >= 6 and argv[1] == "rodata":
        rodata(*argv[2:6], perf_scripts=argv[6:])
    elif len(argv) >= 5 and argv[1] == "faults" and argv[3] == "--keep":
        faults(argv[2], argv[5:], keep=argv[4])
    elif len(argv) >= 4 and argv[1] == "faults":
        faults(argv[2], argv[3:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
