#!/usr/bin/env python3
"""Compare Ganeti 3.0.2's QEMU argv with kvmd's for each case (a report).

Run through compare.sh; see README.md. Needs only Python 3 (Ganeti itself is
needed only for the live side, ganeti_argv.py).

For each case:
  * Ganeti's argv: `ganeti_argv.py` run live when Ganeti 3.0.2 is installed,
    else expected/<case>.ganeti.json (the live run is also checked against
    the saved file, and a drift is reported);
  * kvmd's argv: `<kvmd> --print-argv CASEFILE` (tolerated when missing);
  * both are normalised (run-dir paths, tap fds, Ganeti's uuid-derived device
    ids, Ganeti's per-instance disk symlinks) and compared option by option.

Always exits 0.
"""

import argparse
import collections
import json
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
GANETI_LIB = "/usr/share/ganeti/3.0/ganeti/hypervisor/hv_kvm/__init__.py"

# Options that take several instances; others are keyed by name alone.
MULTI = {"-device", "-drive", "-blockdev", "-netdev", "-net", "-chardev",
         "-object", "-qmp", "-mon", "-usbdevice", "-global", "-boot",
         "-set", "-add-fd", "-numa", "-audiodev", "-fsdev", "-virtfs"}

# kvmd's per-instance run files (src/runtime.rs) -> placeholder names shared
# with Ganeti's.
KVMD_FILES = {"qmp.sock": "qmp", "serial.sock": "serial",
              "serial.log": "serial-log", "qga.sock": "qga",
              "qemu.pid": "pid", "qemu.log": "qemu-log",
              "monitor.sock": "monitor", "vnc.sock": "vnc",
              "chroot": "chroot"}

# Known ways the two sides say the same thing differently. Each hint is shown
# when its Ganeti pattern is only on the Ganeti side and its kvmd pattern is
# only on the kvmd side (patterns match "OPT VALUE" strings).
HINTS = [
  (r"^-no-acpi$", r"^-machine .*\bacpi=off\b",
   "ACPI off: Ganeti -no-acpi, kvmd -machine ...,acpi=off"),
  (r"^-usbdevice (\S+)$", r"^-device usb-",
   "USB device: Ganeti -usbdevice X (legacy), kvmd -device usb-X"),
  (r"^-serial unix:", r"^-serial chardev:",
   "serial: Ganeti -serial unix:PATH,server,nowait, kvmd -chardev socket + "
   "-serial chardev:ID"),
  (r"^-qmp unix:", r"^-mon .*mode=control",
   "QMP: Ganeti -qmp unix:PATH,server,nowait, kvmd -chardev socket + -mon "
   "mode=control"),
  (r"^-drive file=", r"^-blockdev ",
   "disks: Ganeti -drive file=...,if=none, kvmd -blockdev"),
  (r"^-boot c$", r"bootindex=",
   "disk boot: Ganeti -boot c, kvmd bootindex= on the device"),
  (r"^-device virtio-balloon$", r"^-device virtio-balloon-pci",
   "balloon: virtio-balloon is QEMU's alias of virtio-balloon-pci"),
  (r"^-monitor unix:", None,
   "Ganeti also opens an HMP monitor socket (-monitor)"),
  (r"^-qmp unix:<RUN>/kvmd-qmp", None,
   "Ganeti opens a second QMP socket for its ganeti-kvmd daemon"),
  (r"^-daemonize$", None, "Ganeti lets QEMU daemonize itself"),
  (r"^-D ", None, "Ganeti sends QEMU's log to -D /var/log/ganeti/kvm/NAME.log"),
]


# ---- parsing ----------------------------------------------------------------

def qemu_option_arity(help_text):
  """{option: takes_argument} from `qemu --help`."""
  arity = {}
  for line in help_text.splitlines():
    m = re.match(r"^(-[\w-]+)((?: or -[\w-]+)?)( {2,}|$| (\S))", line)
    if not m:
      continue
    names = [m.group(1)] + re.findall(r"-[\w-]+", m.group(2))
    takes = m.group(4) is not None
    for n in names:
      arity.setdefault(n, takes)
  # "-fda/-fdb file" style
  for m in re.finditer(r"^(-[\w-]+)/(-[\w-]+) \S", help_text, re.M):
    arity.setdefault(m.group(1), True)
    arity.setdefault(m.group(2), True)
  return arity


def device_aliases(device_help):
  """{alias: canonical driver} from `qemu -device ?`."""
  out = {}
  for m in re.finditer(r'^name "([^"]+)".*?alias "([^"]+)"', device_help,
                       re.M):
    out[m.group(2)] = m.group(1)
  return out


def split_options(argv, arity):
  """argv -> (binary, [(opt, value-or-None)])."""
  if not argv:
    return None, []
  items = []
  i = 1
  while i < len(argv):
    tok = argv[i]
    if tok.startswith("-") and not re.match(r"^-\d", tok):
      takes = arity.get(tok)
      nxt = argv[i + 1] if i + 1 < len(argv) else None
      if takes is None:   # unknown to this QEMU: guess
        takes = nxt is not None and not nxt.startswith("-")
      if takes and nxt is not None:
        items.append((tok, nxt))
        i += 2
      else:
        items.append((tok, None))
        i += 1
    else:
      items.append(("<arg>", tok))
      i += 1
  return argv[0], items


def split_fields(value):
  """QEMU key=value,... list (',,' is an escaped comma)."""
  fields, cur, i = [], "", 0
  while i < len(value):
    if value[i] == ",":
      if value[i + 1:i + 2] == ",":
        cur += ","
        i += 2
        continue
      fields.append(cur)
      cur = ""
    else:
      cur += value[i]
    i += 1
  fields.append(cur)
  return fields


# ---- normalisation -------------------------------------------------------------

def normaliser(case, ganeti_devices, side):
  name = re.escape(case["name"])
  disks = case.get("disks", [])
  ids = {}
  if side == "ganeti":
    for kind in ("disks", "nics"):
      for i, u in enumerate(ganeti_devices.get(kind, [])):
        ids["%s-%s" % (kind[:-1], u.rsplit("-", 2)[0])] = \
          "<%s%d-id>" % (kind[:-1], i)

  ganeti_ctrl = {"monitor": "monitor", "serial": "serial", "qmp": "qmp",
                 "kvmd": "kvmd-qmp", "qga": "qga", "vnc": "vnc"}

  def norm(s):
    if s is None:
      return None
    if side == "ganeti":
      root = "/var/run/ganeti/kvm-hypervisor"
      s = re.sub(re.escape(root) + r"/ctrl/" + name + r"\.(\w+)",
                 lambda m: "<RUN>/" + ganeti_ctrl.get(m.group(1),
                                                      m.group(1)), s)
      s = re.sub(re.escape(root) + r"/pid/" + name + r"\b", "<RUN>/pid", s)
      s = re.sub(re.escape(root) + r"/chroot/" + name + r"\b",
                 "<RUN>/chroot", s)
      s = re.sub(r"/var/log/ganeti/kvm/" + name + r"\.log", "<RUN>/qemu-log",
                 s)
      # backend symlinks RUN/instance-disks/NAME:IDX -> the disk's path
      s = re.sub(r"/var/run/ganeti/instance-disks/" + name + r":(\d+)",
                 lambda m: (disks[int(m.group(1))]["path"]
                            if int(m.group(1)) < len(disks) else m.group(0)),
                 s)
      for k, v in ids.items():
        s = s.replace(k, v)
    else:
      # kvmd: one directory per instance, RUNDIR/NAME/FILE
      s = re.sub(r"(?:/[^,:\s=]+)?/" + name + r"/([\w.-]+)",
                 lambda m: "<RUN>/" + KVMD_FILES.get(m.group(1), m.group(1)),
                 s)
    # tap / vhost fds: numbers are whatever the opener got
    s = re.sub(r"\b(fd|vhostfd)=-?\d+", r"\1=<FD>", s)
    s = re.sub(r"\b(fds|vhostfds)=(-?\d+(?::-?\d+)*)",
               lambda m: "%s=%s" % (m.group(1), ":".join(
                 "<FD>" for _ in m.group(2).split(":"))), s)
    return s
  return norm


# ---- comparison ------------------------------------------------------------------

def entry_str(e):
  return e[0] if e[1] is None else "%s %s" % e


def pair_key(entry, aliases):
  opt, val = entry
  if val is None or opt not in MULTI:
    return opt
  first = split_fields(val)[0]
  if opt == "-device":
    drv = first.split("=", 1)[-1] if first.startswith("driver=") else first
    return (opt, aliases.get(drv, drv))
  if opt == "-chardev":
    # pair sockets by their (normalised) path, others by backend type
    for f in split_fields(val):
      if f.startswith("path="):
        return (opt, f)
    return (opt, first)
  if opt in ("-netdev", "-object", "-blockdev", "-audiodev"):
    return (opt, first.split("=", 1)[-1])
  if opt == "-drive":
    for f in split_fields(val):
      if f.startswith("file="):
        return (opt, f)
  return (opt, None)


# The key a bare first field stands for (QEMU's implied option).
IMPLIED_KEY = {"-device": "driver", "-netdev": "type", "-chardev": "backend",
               "-blockdev": "driver", "-machine": "type", "-object":
               "qom-type", "-audiodev": "driver", "-serial": "<chardev>",
               "-monitor": "<chardev>", "-qmp": "<chardev>", "-vnc":
               "<display>", "-rtc": "base", "-boot": "order", "-name":
               "guest", "-smp": "cpus", "-m": "size", "-net": "type",
               "-spice": "<opts>", "-usbdevice": "<device>"}

# Values that are not QEMU key=value lists.
PLAIN_VALUES = {"-kernel", "-initrd", "-pidfile", "-D", "-uuid", "-k",
                "-vga", "-mem-path", "-chroot", "-runas", "-cpu"}


def field_diff(opt, gval, kval):
  if opt == "-append":
    gw, kw = (gval or "").split(), (kval or "").split()
    notes = []
    if [w for w in gw if w not in kw]:
      notes.append("only ganeti: " + " ".join(w for w in gw if w not in kw))
    if [w for w in kw if w not in gw]:
      notes.append("only kvmd: " + " ".join(w for w in kw if w not in gw))
    return notes
  if opt in PLAIN_VALUES:
    return []
  implied = IMPLIED_KEY.get(opt, "")
  def kv(value):
    d = collections.OrderedDict()
    for i, f in enumerate(split_fields(value or "")):
      if "=" in f:
        k, v = f.split("=", 1)
      elif i == 0:
        k, v = implied or "<positional>", f
      else:
        k, v = f, None
      d.setdefault(k, v)
    return d
  notes = []
  gd, kd = kv(gval), kv(kval)
  only_g = [k if gd[k] is None else "%s=%s" % (k, gd[k])
            for k in gd if k not in kd]
  only_k = [k if kd[k] is None else "%s=%s" % (k, kd[k])
            for k in kd if k not in gd]
  changed = ["%s: %s -> %s" % (k, gd[k], kd[k]) for k in gd
             if k in kd and gd[k] != kd[k]]
  if only_g:
    notes.append("only ganeti: " + ", ".join(only_g))
  if only_k:
    notes.append("only kvmd: " + ", ".join(only_k))
  if changed:
    notes.append("ganeti -> kvmd: " + "; ".join(changed))
  return notes


def lcs(a, b):
  n, m = len(a), len(b)
  t = [[0] * (m + 1) for _ in range(n + 1)]
  for i in range(n - 1, -1, -1):
    for j in range(m - 1, -1, -1):
      t[i][j] = (t[i + 1][j + 1] + 1 if a[i] == b[j]
                 else max(t[i + 1][j], t[i][j + 1]))
  out, i, j = set(), 0, 0
  while i < n and j < m:
    if a[i] == b[j]:
      out.add(a[i])
      i += 1
      j += 1
    elif t[i + 1][j] >= t[i][j + 1]:
      i += 1
    else:
      j += 1
  return out


def compare(g_items, k_items, aliases):
  """Returns dict with same / only_g / only_k / differ / order."""
  k_left = list(range(len(k_items)))
  same = []        # (gi, ki)
  g_left = []
  for gi, e in enumerate(g_items):
    for pos, ki in enumerate(k_left):
      if k_items[ki] == e:
        same.append((gi, ki))
        del k_left[pos]
        break
    else:
      g_left.append(gi)
  differ = []      # (gi, ki)
  only_g = []
  for gi in g_left:
    key = pair_key(g_items[gi], aliases)
    for pos, ki in enumerate(k_left):
      if pair_key(k_items[ki], aliases) == key:
        differ.append((gi, ki))
        del k_left[pos]
        break
    else:
      only_g.append(gi)
  only_k = k_left
  # order: common entries (same + differ), labelled, in each side's order
  label = {}
  for gi, ki in same + differ:
    label[gi] = "%s#%d" % (entry_str(g_items[gi]) if (gi, ki) in same
                           else g_items[gi][0], gi)
  g_seq = [label[gi] for gi in sorted(label)]
  kmap = dict((ki, label[gi]) for gi, ki in same + differ)
  k_seq = [kmap[ki] for ki in sorted(kmap)]
  keep = lcs(g_seq, k_seq)
  moved = []
  for gi, ki in sorted(same + differ):
    if label[gi] not in keep:
      moved.append((gi, ki))
  return {"same": same, "differ": differ, "only_g": only_g,
          "only_k": only_k, "moved": moved}


# ---- running the two sides --------------------------------------------------------

def run_ganeti(case_path, case_name, mode, update):
  """Returns (result dict or None, source description, notes)."""
  expected_path = os.path.join(HERE, "expected", case_name + ".ganeti.json")
  expected = None
  if os.path.exists(expected_path):
    with open(expected_path) as f:
      expected = json.load(f)
  notes = []
  live = None
  if mode != "expected" and os.path.exists(GANETI_LIB):
    with open(case_path) as f:
      p = subprocess.run([sys.executable, os.path.join(HERE, "ganeti_argv.py")],
                         stdin=f, capture_output=True, text=True,
                         cwd=REPO_ROOT)
    if p.returncode in (0, 2):
      live = json.loads(p.stdout)
    else:
      notes.append("live Ganeti run failed (exit %d): %s" %
                   (p.returncode, p.stderr.strip().splitlines()[-1:]))
  if live is not None:
    if update:
      with open(expected_path, "w") as f:
        json.dump(live, f, indent=1)
        f.write("\n")
      notes.append("saved %s" % os.path.relpath(expected_path, REPO_ROOT))
    elif expected is None:
      notes.append("no saved expected file (run with --update-expected)")
    elif (expected.get("argv"), expected.get("error")) != \
        (live.get("argv"), live.get("error")):
      notes.append("DRIFT: live Ganeti output differs from %s" %
                   os.path.relpath(expected_path, REPO_ROOT))
    return live, "live Ganeti %s" % live.get("ganeti_version"), notes
  if expected is not None:
    src = "saved %s" % os.path.relpath(expected_path, REPO_ROOT)
    if mode != "expected":
      src += " (Ganeti 3.0 not installed)"
    return expected, src, notes
  notes.append("no Ganeti argv: Ganeti not installed and no expected file")
  return None, "none", notes


def run_kvmd(kvmd, case_path):
  """Returns (argv or None, status text)."""
  if not os.path.exists(kvmd):
    return None, "%s not found (build it: cargo build)" % kvmd
  try:
    p = subprocess.run([kvmd, "--print-argv", case_path], capture_output=True,
                       text=True, timeout=60, cwd=REPO_ROOT)
  except (OSError, subprocess.SubprocessError) as err:
    return None, "could not run: %s" % err
  try:
    out = json.loads(p.stdout)
  except ValueError:
    out = None
  if isinstance(out, dict) and isinstance(out.get("argv"), list):
    return out["argv"], "ok" if p.returncode == 0 else \
        "exit %d but printed an argv" % p.returncode
  text = (p.stdout.strip() + "\n" + p.stderr.strip()).strip()
  lines = text.splitlines()
  if re.search(r"unexpected argument|unknown (option|flag|argument)|"
               r"unrecognized|Usage:", text, re.I) and \
      "print-argv" in text:
    return None, "--print-argv not supported by this kvmd yet"
  return None, "no argv (exit %d): %s" % (
    p.returncode, " | ".join(lines[:6]) if lines else "(no output)")


# ---- report --------------------------------------------------------------------

def show_argv(items, binary, indent="    "):
  print(indent + binary)
  for e in items:
    print(indent + entry_str(e))


def hints_for(g_only, k_only):
  out = []
  for gpat, kpat, text in HINTS:
    if any(re.search(gpat, s) for s in g_only) and (
        kpat is None or any(re.search(kpat, s) for s in k_only)):
      out.append(text)
  return out


def report_case(case_path, args, summary):
  case_name = os.path.splitext(os.path.basename(case_path))[0]
  with open(case_path) as f:
    case = json.load(f)
  help_text = open(resolve(case["qemu_help"])).read()
  device_help = open(resolve(case["qemu_device_help"])).read()
  arity = qemu_option_arity(help_text)
  aliases = device_aliases(device_help)

  print("=" * 78)
  print("case %s" % case_name)
  print("=" * 78)
  g, g_src, g_notes = run_ganeti(case_path, case_name, args.ganeti,
                                 args.update_expected)
  print("ganeti: %s" % g_src)
  for n in g_notes:
    print("  note: %s" % n)
  if args.ganeti_only:
    k_argv, k_status = None, "skipped (--ganeti-only)"
  else:
    k_argv, k_status = run_kvmd(args.kvmd, case_path)
  print("kvmd:   %s --print-argv: %s" % (os.path.relpath(args.kvmd, REPO_ROOT)
                                         if args.kvmd.startswith(REPO_ROOT)
                                         else args.kvmd, k_status))

  row = {"case": case_name, "ganeti": "-", "kvmd": "-", "same": "",
         "only_g": "", "only_k": "", "differ": "", "moved": ""}
  summary.append(row)
  if g is None:
    row["ganeti"] = "missing"
    return
  if g.get("argv") is None:
    row["ganeti"] = "REFUSED"
    print("\nGaneti 3.0.2 REFUSES this case")
    print("  stage: %s" % g.get("stage"))
    print("  error: %s" % g.get("error"))
  else:
    row["ganeti"] = "ok"
  for line in g.get("log", []):
    if not line.startswith("INFO: mock:"):
      print("  ganeti log: %s" % line)

  gnorm = normaliser(case, g.get("devices", {}), "ganeti")
  knorm = normaliser(case, {}, "kvmd")
  g_items = []
  if g.get("argv"):
    g_bin, g_items = split_options([gnorm(a) for a in g["argv"]], arity)
  if k_argv is not None:
    row["kvmd"] = "ok"
    k_bin, k_items = split_options([knorm(a) for a in k_argv], arity)
  else:
    row["kvmd"] = "n/a"

  # Options this QEMU does not list at all.
  for side, items in (("Ganeti", g_items),
                      ("kvmd", k_items if k_argv is not None else [])):
    unknown = sorted(set(o for o, _ in items if o != "<arg>" and
                         o not in arity))
    if unknown:
      print("  %s uses options absent from %s: %s" %
            (side, case["qemu_help"], " ".join(unknown)))

  if k_argv is None or not g.get("argv"):
    if g.get("argv"):
      print("\nGaneti argv (normalised; paths under <RUN> are per-instance"
            " run files):")
      show_argv(g_items, g_bin)
    if k_argv is not None:
      print("\nkvmd argv (normalised):")
      show_argv(k_items, k_bin)
    if args.raw and g.get("argv"):
      print("\nGaneti argv (raw):")
      print("    " + json.dumps(g["argv"]))
    print()
    return

  res = compare(g_items, k_items, aliases)
  row.update(same=len(res["same"]), only_g=len(res["only_g"]),
             only_k=len(res["only_k"]), differ=len(res["differ"]),
             moved=len(res["moved"]))
  if g_bin != k_bin:
    print("\nbinary: ganeti %s, kvmd %s" % (g_bin, k_bin))
  print("\nsame in both (%d): %s" % (
    len(res["same"]), "; ".join(entry_str(g_items[gi])
                                for gi, _ in res["same"])))
  print("\nonly in Ganeti (%d):" % len(res["only_g"]))
  for gi in res["only_g"]:
    print("    [%2d] %s" % (gi, entry_str(g_items[gi])))
  print("\nonly in kvmd (%d):" % len(res["only_k"]))
  for ki in res["only_k"]:
    print("    [%2d] %s" % (ki, entry_str(k_items[ki])))
  print("\nin both, different values (%d):" % len(res["differ"]))
  for gi, ki in res["differ"]:
    ge, ke = g_items[gi], k_items[ki]
    print("    %s" % ge[0])
    print("        ganeti [%2d]: %s" % (gi, ge[1]))
    print("        kvmd   [%2d]: %s" % (ki, ke[1]))
    for n in field_diff(ge[0], ge[1], ke[1]):
      print("          - %s" % n)
  print("\norder differences (%d; common options not in the longest common"
        " order):" % len(res["moved"]))
  for gi, ki in res["moved"]:
    text = entry_str(g_items[gi])
    if len(text) > 70:
      text = text[:67] + "..."
    print("    ganeti [%2d] / kvmd [%2d]: %s" % (gi, ki, text))
  hints = hints_for([entry_str(g_items[i]) for i in res["only_g"]] +
                    [entry_str(g_items[gi]) for gi, _ in res["differ"]],
                    [entry_str(k_items[i]) for i in res["only_k"]] +
                    [entry_str(k_items[ki]) for _, ki in res["differ"]])
  if hints:
    print("\nhints (known equivalent or Ganeti-specific forms):")
    for h in hints:
      print("    * " + h)
  if args.raw:
    print("\nraw argv:")
    print("    ganeti: " + json.dumps(g["argv"]))
    print("    kvmd:   " + json.dumps(k_argv))
  print()


def resolve(path):
  if os.path.isabs(path) or os.path.exists(path):
    return path
  return os.path.join(REPO_ROOT, path)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("cases", nargs="*", help="case files or names "
                  "(default: all of cases/*.json)")
  ap.add_argument("--kvmd", default=os.environ.get(
    "KVMD", os.path.join(REPO_ROOT, "target", "debug", "kvmd")))
  ap.add_argument("--ganeti", choices=("auto", "expected"), default="auto",
                  help="auto: live Ganeti if installed, else the saved "
                  "expected files; expected: always the saved files")
  ap.add_argument("--update-expected", action="store_true",
                  help="rewrite expected/<case>.ganeti.json from live Ganeti")
  ap.add_argument("--ganeti-only", action="store_true",
                  help="do not run kvmd; print Ganeti's argv only")
  ap.add_argument("--raw", action="store_true",
                  help="also print the raw (unnormalised) argv")
  args = ap.parse_args()
  args.kvmd = os.path.abspath(args.kvmd)

  paths = []
  if not args.cases:
    d = os.path.join(HERE, "cases")
    paths = sorted(os.path.join(d, f) for f in os.listdir(d)
                   if f.endswith(".json"))
  for c in args.cases:
    if os.path.exists(c):
      paths.append(os.path.abspath(c))
    else:
      p = os.path.join(HERE, "cases", c if c.endswith(".json")
                       else c + ".json")
      d = os.path.join(HERE, "cases")
      pref = sorted(os.path.join(d, f) for f in os.listdir(d)
                    if f.startswith(c) and f.endswith(".json"))
      if os.path.exists(p):
        paths.append(p)
      elif len(pref) == 1:
        paths.append(pref[0])
      else:
        print("no such case (or ambiguous prefix): %s" % c)

  print("Ganeti 3.0.2 vs kvmd QEMU argv parity report")
  print("Normalised: per-instance run files -> <RUN>/NAME (Ganeti:"
        " /var/run/ganeti/kvm-hypervisor/{ctrl,pid,chroot}/..., "
        "/var/log/ganeti/kvm/NAME.log; kvmd: RUNDIR/NAME/FILE),")
  print("  tap/vhost fd numbers -> <FD>, Ganeti device ids"
        " (disk-/nic-<uuid prefix>) -> <diskN-id>/<nicN-id>,")
  print("  Ganeti's disk symlink /var/run/ganeti/instance-disks/NAME:IDX ->"
        " the case's disk path (backend symlinks it there).")
  summary = []
  for p in paths:
    try:
      report_case(p, args, summary)
    except Exception as err:  # a report: keep going
      print("  ERROR while comparing %s: %s: %s" % (p, type(err).__name__,
                                                   err))
      print()
  print("=" * 78)
  print("summary")
  print("=" * 78)
  print("%-40s %-8s %-5s %5s %6s %6s %6s %6s" % (
    "case", "ganeti", "kvmd", "same", "only-G", "only-K", "differ", "moved"))
  for r in summary:
    print("%-40s %-8s %-5s %5s %6s %6s %6s %6s" % (
      r["case"], r["ganeti"], r["kvmd"], r["same"], r["only_g"],
      r["only_k"], r["differ"], r["moved"]))
  return 0


if __name__ == "__main__":
  try:
    main()
  except BrokenPipeError:
    pass
  sys.exit(0)
