"""Writing a benchmark's report: ``<stem>.json`` (every number), ``<stem>.md`` (the tables) and
``<stem>.png`` (the plot) into one folder, and the Markdown on stdout."""
import json
import os
from typing import Any, Callable, Dict


def write_report(out: str, stem: str, r: Dict[str, Any], markdown: Callable[[Dict[str, Any]], str],
                 plot: Callable[[Dict[str, Any], str], None]) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, stem + ".json"), "w") as f:
        json.dump(r, f, indent=2)
    text = markdown(r)
    with open(os.path.join(out, stem + ".md"), "w") as f:
        f.write(text)
    plot(r, os.path.join(out, stem + ".png"))
    print(text)
