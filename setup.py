"""Ship the widgets' front-end files (top-level ``widgets/``) inside the package.

Everything else is declared in pyproject.toml. The ES modules and the style sheet are
copied to ``sxlab/widgets/static/`` of the built package, where
:mod:`sxlab.widgets._assets` finds them; an editable install reads them from the source
tree's ``widgets/`` folder instead.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

FRONT_END = Path(__file__).resolve().parent / "widgets"


class BuildPyWithFrontEnd(build_py):
    def run(self):
        super().run()
        if self.editable_mode:
            return
        target = Path(self.build_lib) / "sxlab" / "widgets" / "static"
        target.mkdir(parents=True, exist_ok=True)
        for pattern in ("*.js", "*.css"):
            for f in sorted(FRONT_END.glob(pattern)):
                shutil.copy2(f, target / f.name)


setup(cmdclass={"build_py": BuildPyWithFrontEnd})
