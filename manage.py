#!/usr/bin/env python
"""Django's command-line entry point."""
import os
import sys

# Commands that never connect to the database: they run without starting the embedded
# PostgreSQL. Every other command (migrate, run_dispatchers, qcluster, shell, ...) starts it
# first when DATABASE_URL is unset. `check` connects only with --database.
NO_DATABASE_COMMANDS = {
    "help", "--help", "-h", "version", "--version", "check", "collectstatic", "diffsettings",
    "makemessages", "compilemessages", "startapp", "startproject",
}


def needs_database(argv: list[str]) -> bool:
    command = argv[1] if len(argv) > 1 else "help"
    if command == "check":
        return any(arg.startswith("--database") for arg in argv[2:])
    return command not in NO_DATABASE_COMMANDS


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "notifications_project.settings")
    if needs_database(sys.argv):
        from notifications_project import embedded_postgres

        embedded_postgres.ensure_running_if_used()
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
