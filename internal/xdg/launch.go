package xdg

import (
	"fmt"
	"os/exec"
	"syscall"
)

// Launch starts the application on files (absolute paths), once per command of
// Entry.Commands, and returns the process IDs. Each process is detached from the caller:
// it runs in a new session (no controlling terminal, not in the caller's process group,
// so a signal to the caller's job does not reach it), with standard input, output and
// error on /dev/null, directly (no shell), in the directory of the entry's Path= if it has
// one and in the caller's otherwise, with environment env (nil: the caller's). Launch
// does not wait for the application; the processes are reaped in the background while
// the caller runs, and by init when it has exited.
func (a *App) Launch(files []string, env []string) ([]int, error) {
	cmds, err := a.Entry.Commands(files)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", a.Entry.ID, err)
	}
	var pids []int
	for _, argv := range cmds {
		c := &exec.Cmd{
			Path:        a.Program,
			Args:        argv,
			Env:         env,
			Dir:         a.Entry.Path,
			SysProcAttr: &syscall.SysProcAttr{Setsid: true},
		}
		if err := c.Start(); err != nil {
			return pids, fmt.Errorf("%s: %w", a.Entry.ID, err)
		}
		pids = append(pids, c.Process.Pid)
		go c.Wait()
	}
	return pids, nil
}
