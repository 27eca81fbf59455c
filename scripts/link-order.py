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

  link-order.py rodata BINARY MAP RUNNING STARTUP > PATTERNS
      The read-only data the listed functions refer to, as input section
      patterns of a linker script (platform/linker/build.rs puts them in an
      output section of their own, `.rodata.hot`, after `.rodata`). MAP is
      the binary's link map (`-Wl,-Map=`): it names every input section, also
      those of constants without a symbol (`.rodata..Lanon.*`, jump tables),
      which a symbol ordering file cannot move. A function's references are
      the addresses its instructions name (objdump's `# address` notes):
      jump tables, lookup tables, strings. What the running daemons' code
      refers to comes first, then what start-up's code adds, then what only
      the functions valgrind ran in place of a variant refer to.
"""

import bisect
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


def rodata(binary, map_path, running_path, startup_path):
    sections = rodata_sections(map_path)
    if not sections:
        sys.exit(f"link-order: no .rodata input sections in {map_path}")
    starts = [start for start, _, _, _ in sections]
    rank = {}
    for name in read_names(running_path) + read_names(startup_path):
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
            address = int(target, 16)
            if not low <= address < high:
                continue
            index = bisect.bisect_right(starts, address) - 1
            start, size, _, _ = sections[index]
            if start <= address < start + size:
                first_reference[index] = min(first_reference.get(index, current), current)
    if dump.wait() != 0:
        sys.exit("link-order: objdump failed")

    written = set()
    for index in sorted(first_reference, key=lambda index: (first_reference[index], index)):
        _, _, section, file = sections[index]
        line = pattern(section, file)
        if line and line not in written:
            written.add(line)
            print(line)


def main(argv):
    if len(argv) == 3 and argv[1] == "siblings":
        siblings(argv[2])
    elif len(argv) == 6 and argv[1] == "rodata":
        rodata(*argv[2:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
