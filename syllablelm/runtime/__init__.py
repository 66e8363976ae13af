"""How commands run: atomic writes, fault injection points, exit statuses with skip counts, reproducible seeds;
and strings held as columns.

- :mod:`.fileio`: atomic writes, JSON, shard ranges, weight fingerprints;
- :mod:`.faults`: ``SYLLABLELM_FAULT`` points the fault tests crash at;
- :mod:`.outcome`: exit statuses and the record of skipped inputs;
- :mod:`.seeding`: seeds derived from (seed, epoch, worker) so a resumed run draws the same numbers;
- :mod:`.strings`: strings as columns (one UTF-8 buffer + offsets) and a hash index to find them.
"""
