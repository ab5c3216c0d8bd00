# Sourced by scripts that need a pinned Python package from PyPI:
#   pip_pinned DIR PACKAGE VERSION
# puts DIR first on PYTHONPATH and installs PACKAGE==VERSION (with its
# dependencies) there with pip unless that version is already importable.
pip_pinned() {
  local pkgs="$1" package="$2" version="$3"
  export PYTHONPATH="$pkgs${PYTHONPATH:+:$PYTHONPATH}"
  if ! python3 -c "import importlib.metadata as m, sys; sys.exit(m.version('$package') != '$version')" 2>/dev/null; then
    rm -rf "$pkgs"
    python3 -m pip install --quiet --disable-pip-version-check --target "$pkgs" "$package==$version"
  fi
}
