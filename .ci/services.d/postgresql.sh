# PostgreSQL server binaries (initdb, pg_ctl) for the experiment-database tests, which start
# a throwaway cluster on loopback.  Debian keeps them in /usr/lib/postgresql/<version>/bin.
_pg_initdb=$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1)
need_packages "${_pg_initdb:-/usr/lib/postgresql/none/bin/initdb}" postgresql
unset _pg_initdb
