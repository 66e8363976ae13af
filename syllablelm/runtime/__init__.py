"""How commands run: atomic writes, fault injection points, exit statuses with skip counts, reproducible seeds.

- :mod:`.fileio`: atomic writes, JSON, shard ranges, weight fingerprints;
- :mod:`.faults`: ``SYLLABLELM_FAULT`` points the fault tests crash at;
- :mod:`.outcome`: exit statuses and the record of skipped inputs;
- :mod:`.seeding`: seeds derived from (seed, epoch, worker) so a resumed run draws the same numbers.
"""
