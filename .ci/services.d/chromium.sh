# Debian's Chromium for the browser tests of the notebook widgets (driven by Playwright's
# Python package with the system browser as executable; no browser download at test time).
need_packages /usr/bin/chromium chromium
