"""Helm without a helm binary: Helm's own Go SDK through the helm-python-sdk wheel (PyPI), for the chart tests.

  python .ci/helm.py render CHART RELEASE NAMESPACE VALUES_JSON   -> {"template path": "manifest", ...} as JSON
  python .ci/helm.py lint CHART VALUES_JSON                         -> exit 1 on any lint error or warning
"""

import json
import sys

import helm_python as helm


def main(argv):
    cmd, chart = argv[1], argv[2]
    if cmd == "render":
        release, namespace, values = argv[3], argv[4], json.loads(argv[5])
        with helm.Chart.load(chart) as c:
            # is_install: what `helm install` renders (Release.IsInstall).
            print(json.dumps(c.render(values, name=release, namespace=namespace, is_install=True)))
        return 0
    if cmd == "lint":
        report = helm.lint(chart, json.loads(argv[3]), strict=True)
        # Severity 1 is info ("icon is recommended"); 2 warning, 3 error.
        bad = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        for m in bad:
            print(m, file=sys.stderr)
        return 1 if bad else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
