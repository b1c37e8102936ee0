select pg_current_logfile() as logfile, current_setting('data_directory') as data_directory
