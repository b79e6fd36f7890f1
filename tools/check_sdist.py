"""Checks that an sdist holds every tracked file a build from it needs (make wheel-check).

    python tools/check_sdist.py dist/ddf_ops-X.tar.gz

setuptools puts the Python package and the extension's listed sources in an sdist, but not the
headers they include: MANIFEST.in adds those, and this check fails when a new file would be
left out (a header in a new kernel folder, say).
"""

import subprocess
import sys
import tarfile

NEEDED_DIRS = ("csrc/", "meta/", "cmake/", "ddf_ops/")
NEEDED_FILES = ("setup.py", "pyproject.toml", "CMakeLists.txt", "MANIFEST.in", "README.md", "hubconf.py")

sdist = sys.argv[1]
with tarfile.open(sdist) as tar:
    names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
tracked = subprocess.run(["git", "ls-files"], capture_output=True, text=True, check=True).stdout.split()
needed = [f for f in tracked if f.startswith(NEEDED_DIRS) or f in NEEDED_FILES]
missing = sorted(set(needed) - names)
if missing:
    sys.exit(f"{sdist} lacks {len(missing)} tracked files a build needs: {missing}")
if any(name.endswith((".so", ".o")) for name in names):
    sys.exit(f"{sdist} holds compiled files: {sorted(n for n in names if n.endswith(('.so', '.o')))}")
print(f"{sdist}: OK ({len(needed)} needed files present)")
