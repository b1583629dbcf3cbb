package main

// Child processes that never outlive the harness: every one is recorded
// when started and stopped (SIGTERM, then SIGKILL) by Supervisor.StopAll,
// which runs on every way out, including SIGINT and SIGTERM to the harness.

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Proc is one running child.
type Proc struct {
	Name string
	Cmd  *exec.Cmd
	Log  string
	done chan struct{}
	err  error
}

// Supervisor owns the children.
type Supervisor struct {
	mu    sync.Mutex
	procs []*Proc
	dir   string
}

// NewSupervisor logs children under dir and stops them on SIGINT/SIGTERM.
func NewSupervisor(dir string) *Supervisor {
	s := &Supervisor{dir: dir}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		s.StopAll()
		os.Exit(130)
	}()
	return s
}

// Start runs a command in the background, its output in a log file.
func (s *Supervisor) Start(name string, c *Command) (*Proc, error) {
	log := filepath.Join(s.dir, strings.ReplaceAll(name, "/", "_")+".log")
	f, err := os.OpenFile(log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(c.Path, c.Args...)
	cmd.Env = c.Env
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &Proc{Name: name, Cmd: cmd, Log: log, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	s.mu.Lock()
	s.procs = append(s.procs, p)
	s.mu.Unlock()
	return p, nil
}

// Exited reports whether the process has ended, and how.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Stop sends SIGTERM and waits (SIGKILL after grace).
func (p *Proc) Stop(grace time.Duration) {
	if ok, _ := p.Exited(); ok {
		return
	}
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.Cmd.Process.Kill()
		<-p.done
	}
}

// StopAll stops every child still running.
func (s *Supervisor) StopAll() {
	s.mu.Lock()
	procs := append([]*Proc{}, s.procs...)
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Add(1)
		go func(p *Proc) { defer wg.Done(); p.Stop(15 * time.Second) }(p)
	}
	wg.Wait()
}

// Tail returns the last lines of a log, for failure messages.
func Tail(path string, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return "    " + strings.Join(all, "\n    ")
}

// RunOnce runs a command to completion with a deadline, returning its
// combined output.
func RunOnce(c *Command, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.Path, c.Args...)
	cmd.Env = c.Env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// WaitHTTP200 polls url until it answers 200, the process dies, or the
// deadline passes.
func WaitHTTP200(url string, p *Proc, deadline time.Time) error {
	client := &http.Client{Timeout: 2 * time.Second}
	last := "no answer"
	for time.Now().Before(deadline) {
		if p != nil {
			if ok, err := p.Exited(); ok {
				return fmt.Errorf("%s exited (%v) before %s answered 200:\n%s", p.Name, err, url, Tail(p.Log, 20))
			}
		}
		resp, err := client.Get(url)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(body)))
		} else {
			last = err.Error()
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("%s: not 200 in time (last: %s)", url, last)
}
