#!/usr/bin/env bash
# Remove the installed pg_conveyor.so before a new one is copied in. cp onto an existing file
# rewrites the inode that running servers have mapped, and they crash; after an unlink the
# copy gets a new inode, running backends keep the old one, new backends load the new one.
set -euo pipefail
lib="$(/usr/bin/pg_config --pkglibdir)/pg_conveyor.so"
if [ -e "$lib" ]; then
    if [ "$(id -u)" = 0 ]; then rm -f "$lib"; else sudo rm -f "$lib"; fi
fi
