"""GENERATED from ``agent.contract`` (python -m agent.contract_spec_gen): do not edit.

Per model, in declaration order: ``(field, type, default)``; ``type`` is one of
``("int", ge, le)``, ``("float", ge, le)``,
``("str", min_length, max_length, pattern, nul_free)``, ``("literal", choices)``,
``("datetime", ge_epoch_s, le_epoch_s)``, ``("list", item_type, max_length)``,
``("model", name)`` or ``("optional", type)``; ``default`` is ``REQUIRED`` or the value.
"""

REQUIRED = "<required>"

MAX_COUNTER_SECONDS = 1000000000000.0
MAX_BYTES = 1152921504606846976
MAX_COUNT = 2147483647
MAX_PID = 4294967295
MAX_GROUPS = 5000
MAX_PROCESSES = 20000
MAX_SNAPSHOTS = 8
MAX_RAW_OUTPUT_CHARS = 4194304
MAX_COMMAND_CHARS = 4096
MAX_NAME_CHARS = 256

SPEC = {'Host': (('server_id', ('str', 1, 128, '^[A-Za-z0-9._:@-]+$', False), '<required>'),
          ('hostname', ('str', 1, 253, None, True), '<required>'),
          ('os_type',
           ('literal', ('linux', 'darwin', 'windows', 'freebsd', 'openbsd', 'netbsd', 'other')),
           '<required>'),
          ('os_version', ('str', 0, 128, None, True), ''),
          ('boot_id', ('optional', ('str', 0, 64, None, True)), None),
          ('agent_version', ('str', 0, 32, None, True), '')),
 'ProcessGroup': (('name', ('str', 1, 256, None, True), '<required>'),
                  ('num_procs', ('int', 0, 2147483647), '<required>'),
                  ('cpu_user_seconds_total', ('float', 0, 1000000000000.0), '<required>'),
                  ('cpu_system_seconds_total', ('float', 0, 1000000000000.0), '<required>'),
                  ('memory_resident_bytes', ('int', 0, 1152921504606846976), '<required>'),
                  ('memory_virtual_bytes', ('optional', ('int', 0, 1152921504606846976)), None),
                  ('memory_swapped_bytes', ('optional', ('int', 0, 1152921504606846976)), None),
                  ('num_threads', ('optional', ('int', 0, 2147483647)), None),
                  ('open_fds', ('optional', ('int', 0, 2147483647)), None),
                  ('read_bytes_total', ('optional', ('int', 0, 1152921504606846976)), None),
                  ('write_bytes_total', ('optional', ('int', 0, 1152921504606846976)), None),
                  ('major_page_faults_total', ('optional', ('int', 0, 1152921504606846976)), None),
                  ('minor_page_faults_total', ('optional', ('int', 0, 1152921504606846976)), None),
                  ('context_switches_voluntary_total',
                   ('optional', ('int', 0, 1152921504606846976)),
                   None),
                  ('context_switches_nonvoluntary_total',
                   ('optional', ('int', 0, 1152921504606846976)),
                   None),
                  ('oldest_start_time', ('optional', ('datetime', 0.0, 7258118400.0)), None)),
 'ProcessSample': (('pid', ('int', 0, 4294967295), '<required>'),
                   ('ppid', ('optional', ('int', 0, 4294967295)), None),
                   ('user', ('optional', ('str', 0, 64, None, True)), None),
                   ('name', ('str', 1, 256, None, True), '<required>'),
                   ('command', ('str', 0, 4096, None, True), ''),
                   ('state', ('optional', ('str', 0, 16, None, True)), None),
                   ('start_time', ('optional', ('datetime', 0.0, 7258118400.0)), None),
                   ('cpu_seconds_total', ('optional', ('float', 0, 1000000000000.0)), None),
                   ('cpu_percent', ('optional', ('float', 0, 100000)), None),
                   ('memory_percent', ('optional', ('float', 0, 100)), None),
                   ('rss_bytes', ('optional', ('int', 0, 1152921504606846976)), None),
                   ('vsz_bytes', ('optional', ('int', 0, 1152921504606846976)), None),
                   ('tty', ('optional', ('str', 0, 64, None, True)), None),
                   ('session_name', ('optional', ('str', 0, 64, None, True)), None),
                   ('session_id', ('optional', ('int', 0, 2147483647)), None)),
 'Snapshot': (('source',
               ('literal', ('ps', 'tasklist', 'process_exporter', 'proc_stat')),
               '<required>'),
              ('sha256', ('str', 0, 4194304, '^[0-9a-f]{64}$', False), '<required>'),
              ('process_count', ('int', 0, 2147483647), 0),
              ('unparsed_lines', ('int', 0, 2147483647), 0),
              ('raw_output', ('optional', ('str', 0, 4194304, None, True)), None)),
 'Report': (('report_id', ('str', 8, 64, '^[A-Za-z0-9_-]+$', False), '<required>'),
            ('host', ('model', 'Host'), '<required>'),
            ('collected_at', ('datetime', 0.0, 7258118400.0), '<required>'),
            ('process_groups', ('list', ('model', 'ProcessGroup'), 5000), []),
            ('processes', ('list', ('model', 'ProcessSample'), 20000), []),
            ('snapshots', ('list', ('model', 'Snapshot'), 8), []))}
