/* hal-noutmp: loaded (LD_PRELOAD) into the tmux server hal starts for each process, so
 * that tmux records no utmp login for the process's pane.
 *
 * tmux, where built with libutempter (Debian's is), calls utempter_add_record() for every
 * pane it opens and utempter_remove_record() when the pane closes; each call forks and
 * execs libutempter's setgid helper, which writes the login to utmp and wtmp. An agent's
 * pane is not a login: with many agents running, `who` and `last` would list each one, and
 * the two helper processes would cost CPU and delay each task's start.
 * tmux has no option to turn this off; these definitions come first in the server's symbol
 * lookup and do nothing. tmux ignores what they return; 1 is libutempter's "done".
 *
 * hal unsets LD_PRELOAD in the server's global environment before it opens the pane
 * (process/tmux.py), so nothing the pane runs loads this library.
 */

int utempter_add_record(int master_fd, const char *hostname)
{
    (void)master_fd;
    (void)hostname;
    return 1;
}

int utempter_remove_record(int master_fd)
{
    (void)master_fd;
    return 1;
}

int utempter_remove_added_record(void)
{
    return 1;
}
