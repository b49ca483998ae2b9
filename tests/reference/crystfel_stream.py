"""Plain-Python reference reader of CrystFEL 2.3 streams (slow and obvious).

It walks the lines one by one, follows the markers and converts every field with
``float()``. Numbers stay in the stream's units (nm, nm^-1, degrees); panels stay names.
"""

from __future__ import annotations


def read(path) -> dict[str, list]:
    """Lists of dicts: ``frames``, ``peaks``, ``crystals``, ``reflections``."""
    out = {"frames": [], "peaks": [], "crystals": [], "reflections": []}
    state = "outside"
    chunk = crystal = None
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    for line in lines:
        if state == "outside":
            if line == "----- Begin chunk -----":
                chunk = {"n_crystals": 0}
                state = "chunk"
            continue
        if line == "----- End chunk -----":
            out["frames"].append(chunk)
            state = "outside"
            continue
        if state == "peaks":
            if line == "End of peak list":
                state = "chunk"
            elif line.split() and line.split()[0] != "fs/px":
                f = line.split()
                out["peaks"].append({"serial": chunk["serial"], "fs": float(f[0]),
                                     "ss": float(f[1]), "invd_nm": float(f[2]),
                                     "intensity": float(f[3]), "panel": f[4]})
            continue
        if state == "reflections":
            if line == "End of reflections":
                state = "crystal"
            elif line.split() and line.split()[0] != "h":
                f = line.split()
                out["reflections"].append({
                    "serial": chunk["serial"], "crystal": crystal["crystal"],
                    "h": int(f[0]), "k": int(f[1]), "l": int(f[2]), "I": float(f[3]),
                    "sigma": float(f[4]), "peak": float(f[5]), "bg": float(f[6]),
                    "fs": float(f[7]), "ss": float(f[8]), "panel": f[9]})
            continue
        if state == "crystal":
            if line == "Reflections measured after indexing":
                state = "reflections"
            elif line == "--- End crystal":
                out["crystals"].append(crystal)
                state = "chunk"
            elif line.startswith("Cell parameters "):
                f = line.split()
                crystal["cell_nm_deg"] = [float(f[i]) for i in (2, 3, 4, 6, 7, 8)]
            elif " = " in line:
                key, _, value = line.partition(" = ")
                if key in ("astar", "bstar", "cstar"):
                    crystal[key] = [float(v) for v in value.split()[:3]]
                else:
                    crystal[key] = value
            continue
        # state == "chunk"
        if line == "Peaks from peak search":
            state = "peaks"
        elif line == "--- Begin crystal":
            crystal = {"serial": chunk["serial"], "crystal": chunk["n_crystals"]}
            chunk["n_crystals"] += 1
            state = "crystal"
        elif line.startswith("Image serial number: "):
            chunk["serial"] = int(line.split(": ", 1)[1])
        elif line.startswith(("Image filename: ", "Event: ")):
            key, _, value = line.partition(": ")
            chunk[key] = value
        elif " = " in line:
            key, _, value = line.partition(" = ")
            chunk[key] = value
    return out
