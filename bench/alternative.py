"""The usual alternative: a straightforward row-at-a-time SQLAlchemy ORM import.

What one would write first: for each row, validate it with personsd's own
pure parsers (``normalize_mdn``, the offline carrier check for an MDN being
assigned, ``CustomField.parse``), look the person up by its identifier,
insert or update it through the ORM, and commit every 1,000 rows. It runs
against personsd's schema (created beforehand by the parent) through
personsd's engine settings, so only the way of importing differs.

    python bench/alternative.py --url URL --tenant-id N FILE [--rows N]

Prints ``{"rows": N, "created": C, "updated": U, "failed": F, "seconds": S}``.
"""

from __future__ import annotations

import csv
import itertools
import json
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from loading import arguments
from personsd.errors import RowError
from personsd.fieldtypes import CustomField, FieldType, StoredValue
from personsd.phones import normalize_mdn, offline_lookup
from personsd.store import db
from personsd.store.models import PersonRow

COMMIT_EVERY = 1_000
FIELDS = {
    "first_name": CustomField(name="first_name", type=FieldType.STRING, id=1),
    "age": CustomField(name="age", type=FieldType.NUMBER, id=2),
    "sport_interests": CustomField(
        name="sport_interests",
        type=FieldType.MULTI_SELECT,
        id=3,
        options=("football", "hockey", "soccer", "golf", "basketball"),
    ),
}


def import_file(url: str, path: Path, tenant_id: int, limit: int | None) -> dict[str, int]:
    counts = {"rows": 0, "created": 0, "updated": 0, "failed": 0}
    engine = db.connect(url)
    with path.open(encoding="utf-8", newline="") as fh, Session(engine) as session:
        reader = csv.DictReader(fh)
        for row in itertools.islice(reader, limit):
            counts["rows"] += 1
            outcome = import_row(session, tenant_id, row)
            counts[outcome] += 1
            if counts["rows"] % COMMIT_EVERY == 0:
                session.commit()
        session.commit()
    engine.dispose()
    return counts


def import_row(session: Session, tenant_id: int, row: dict[str, str]) -> str:
    """One row: ``created``, ``updated`` or ``failed``."""
    mdn = normalize_mdn(row["mdn"].strip())
    if mdn is None:
        return "failed"
    values: dict[str, StoredValue | None] = {}
    for name, field in FIELDS.items():
        raw = row[name].strip()
        if not raw:
            # SPEC 1.5: a blank select clears, any other blank leaves the value.
            if field.type is FieldType.MULTI_SELECT:
                values[name] = None
            continue
        parsed = field.parse(raw, multi_delimiter="|")
        if isinstance(parsed, RowError):
            return "failed"
        values[name] = parsed
    ext_id = row["external_person_id"].strip()
    person = session.scalar(
        select(PersonRow).where(
            PersonRow.tenant_id == tenant_id, PersonRow.external_person_id == ext_id
        )
    )
    moment = datetime.now(UTC)
    if person is None:
        if offline_lookup(mdn) is not None:
            return "failed"
        person = PersonRow(
            tenant_id=tenant_id,
            person_key=str(uuid.uuid4()),
            external_person_id=ext_id,
            mdn=mdn,
            attributes="{}",
            created_at=moment,
            updated_at=moment,
        )
        session.add(person)
        outcome = "created"
    else:
        if person.mdn != mdn:
            if person.mdn is not None or offline_lookup(mdn) is not None:
                return "failed"
            person.mdn = mdn
        outcome = "updated"
    attributes = json.loads(person.attributes)
    for name, value in values.items():
        key = str(FIELDS[name].id)
        if value is None:
            attributes.pop(key, None)
        else:
            attributes[key] = list(value) if isinstance(value, tuple) else value
    person.attributes = json.dumps(attributes, ensure_ascii=False)
    person.updated_at = moment
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__.splitlines()[0], tenant_id=True, pragmas=False)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    counts = import_file(args.url, args.file, args.tenant_id, args.rows)
    print(json.dumps({**counts, "seconds": time.perf_counter() - start}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
