package main

// `validate scrape`: a real Prometheus server scrapes a running local
// cluster (`herald dev`, plus an edge), with the alert rules loaded, and
// the dashboard's own queries are evaluated against it:
//
//   - the publish-rate panel returns the rate at which the harness
//     published, and the publish count is exact;
//   - the connections panel returns the number of SSE clients the harness
//     holds open, and drops back to zero when they leave;
//   - every alert rule evaluates without error, and none of the structural
//     ones (leader, nodes, lag, peers, edge links) is pending or firing on
//     a healthy cluster.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

type scrapeRun struct {
	bin      string
	prom     string
	sup      *Supervisor
	promAddr string
	grpc     string
	key      string
	edgeKey  string
}

func scrapeCmd(args []string) error {
	fs := flag.NewFlagSet("scrape", flag.ExitOnError)
	bin := fs.String("bin", "target/debug", "directory with herald, herald-node and herald-edge")
	prom := fs.String("prometheus", "prometheus", "the Prometheus server binary")
	rules := fs.String("rules", "deploy/prometheus/alerts.yaml", "alert rules to load")
	dashboard := fs.String("dashboard", "deploy/grafana/herald.json", "Grafana dashboard whose queries are evaluated")
	publishes := fs.Int("publishes", 40, "publications in the measured burst")
	window := fs.Duration("window", 20*time.Second, "range of the rate query ($__rate_interval)")
	workdir := fs.String("workdir", "", "where to create the temporary directory (default: the system's)")
	fs.Parse(args)
	abs, err := filepath.Abs(*bin)
	if err != nil {
		return err
	}
	rulesAbs, err := filepath.Abs(*rules)
	if err != nil {
		return err
	}
	panels, err := dashboardQueries(*dashboard)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp(*workdir, "herald-scrape-")
	if err != nil {
		return err
	}
	r := &scrapeRun{bin: abs, prom: *prom, sup: NewSupervisor(dir)}
	err = r.run(dir, rulesAbs, panels, *publishes, *window)
	r.sup.StopAll()
	if err != nil {
		fmt.Fprintf(os.Stderr, "logs kept in %s\n", dir)
		return err
	}
	os.RemoveAll(dir)
	return nil
}

// dashboardQueries maps each panel title of the dashboard to its first
// query.
func dashboardQueries(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
			Panels []struct {
				Title   string `json:"title"`
				Targets []struct {
					Expr string `json:"expr"`
				} `json:"targets"`
			} `json:"panels"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	out := map[string]string{}
	for _, p := range d.Panels {
		if len(p.Targets) > 0 {
			out[p.Title] = p.Targets[0].Expr
		}
		for _, q := range p.Panels {
			if len(q.Targets) > 0 {
				out[q.Title] = q.Targets[0].Expr
			}
		}
	}
	return out, nil
}

// grafanaExpr replaces the dashboard's variables with this run's values.
func grafanaExpr(expr string, window time.Duration) string {
	r := strings.NewReplacer(
		"$node_job", "herald-node",
		"$edge_job", "herald-edge",
		"$namespace", ".*",
		"$__rate_interval", fmt.Sprintf("%ds", int(window.Seconds())),
		"$__range", "1h",
	)
	return r.Replace(expr)
}

var devLine = regexp.MustCompile(`^node (\d+) (grpc|metrics) (\S+)$`)

func (r *scrapeRun) run(dir, rules string, panels map[string]string, publishes int, window time.Duration) error {
	ratePanel, connPanel := panels["Publishes per second"], panels["Connections"]
	if ratePanel == "" || connPanel == "" {
		return errors.New(`the dashboard has no "Publishes per second" or "Connections" panel`)
	}
	// 1. herald dev: a 3-node cluster (plaintext: the edge below links with
	// the printed edge key); read its banner.
	dev := &Command{Path: filepath.Join(r.bin, "herald"), Args: []string{"dev", "--plaintext"}, Env: []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir}}
	banner, err := r.startDev(dev)
	if err != nil {
		return err
	}
	var nodeTargets []string
	for _, l := range banner {
		if m := devLine.FindStringSubmatch(l); m != nil {
			switch {
			case m[2] == "grpc" && r.grpc == "":
				r.grpc = m[3]
			case m[2] == "metrics":
				u, err := url.Parse(m[3])
				if err != nil {
					return err
				}
				nodeTargets = append(nodeTargets, u.Host)
			}
		}
		if k, ok := strings.CutPrefix(l, "api-key "); ok {
			r.key = k
		}
		if k, ok := strings.CutPrefix(l, "edge-key "); ok {
			r.edgeKey = k
		}
	}
	if len(nodeTargets) == 0 || r.grpc == "" || r.key == "" || r.edgeKey == "" {
		return fmt.Errorf("herald dev printed no node metrics, grpc or api-key lines:\n%s", strings.Join(banner, "\n"))
	}
	fmt.Printf("  herald dev: %d nodes ready\n", len(nodeTargets))

	// 2. An edge linked to the cluster (herald dev runs nodes only).
	edgeClient, err := freePort()
	if err != nil {
		return err
	}
	edgeHTTP, err := freePort()
	if err != nil {
		return err
	}
	edge := &Command{Path: filepath.Join(r.bin, "herald-edge"), Env: []string{"PATH=" + os.Getenv("PATH")}, Args: []string{
		"--listen", edgeClient, "--http-listen", edgeHTTP, "--nodes", r.grpc,
		"--api-key", r.edgeKey, "--allow-anonymous", "--anonymous-channels", "scrape-test",
	}}
	edgeProc, err := r.sup.Start("edge", edge)
	if err != nil {
		return err
	}
	if err := WaitHTTP200("http://"+edgeHTTP+"/readyz", edgeProc, time.Now().Add(60*time.Second)); err != nil {
		return err
	}
	fmt.Println("  edge ready")

	// 3. Prometheus scraping both, every second, with the rules loaded.
	if err := r.startPrometheus(dir, rules, nodeTargets, edgeHTTP); err != nil {
		return err
	}
	if err := r.waitValue(fmt.Sprintf(`sum(up{job=~"herald-node|herald-edge"})`), float64(len(nodeTargets)+1), 0, 60*time.Second); err != nil {
		return fmt.Errorf("targets: %w", err)
	}
	fmt.Printf("  prometheus scrapes %d node(s) and 1 edge\n", len(nodeTargets))

	// 4. Publish rate: one publication so the series exists, a full window
	// of quiet, then a burst; the panel's rate over a window holding the
	// whole burst is burst/window.
	if _, err := r.cli("publish", "scrape-test", `{"n":0}`); err != nil {
		return err
	}
	count := `sum(herald_publish_duration_seconds_count{job="herald-node",result="ok"})`
	if err := r.waitValue(count, 1, 0, 30*time.Second); err != nil {
		return err
	}
	time.Sleep(window + 2*time.Second)
	start := time.Now()
	for i := 1; i <= publishes; i++ {
		if _, err := r.cli("publish", "scrape-test", fmt.Sprintf(`{"n":%d}`, i)); err != nil {
			return err
		}
	}
	burst := time.Since(start)
	if burst > window/2 {
		return fmt.Errorf("the burst took %s, too long for a %s window; use fewer -publishes", burst, window)
	}
	if err := r.waitValue(count, float64(publishes+1), 0, 30*time.Second); err != nil {
		return fmt.Errorf("publish count: %w", err)
	}
	fmt.Printf("  publish count: %s = %d (exact)\n", count, publishes+1)
	time.Sleep(2 * time.Second)
	rateExpr := grafanaExpr(ratePanel, window)
	want := float64(publishes) / window.Seconds()
	got, err := r.query(fmt.Sprintf("sum(%s)", rateExpr))
	if err != nil {
		return err
	}
	if math.Abs(got-want) > 0.15*want {
		return fmt.Errorf("publish rate panel %q = %.3f/s, want %.3f/s ±15%% (%d publishes in a %s window)", rateExpr, got, want, publishes, window)
	}
	fmt.Printf("  publish rate panel: %.3f/s, expected %.3f/s (%d publishes in %s, window %s)\n", got, want, publishes, burst.Round(time.Millisecond), window)

	// 5. Connections: hold SSE clients open, then close them.
	connExpr := grafanaExpr(connPanel, window)
	const clients = 5
	ctx, cancel := context.WithCancel(context.Background())
	for i := 0; i < clients; i++ {
		if err := openSSE(ctx, edgeClient, "scrape-test"); err != nil {
			cancel()
			return err
		}
	}
	if err := r.waitValue(fmt.Sprintf("sum(%s)", connExpr), clients, 0, 30*time.Second); err != nil {
		cancel()
		return fmt.Errorf("connections panel: %w", err)
	}
	fmt.Printf("  connections panel: %d while %d SSE clients are connected\n", clients, clients)
	cancel()
	if err := r.waitValue(fmt.Sprintf("sum(%s)", connExpr), 0, 0, 30*time.Second); err != nil {
		return fmt.Errorf("connections panel after the clients left: %w", err)
	}
	fmt.Println("  connections panel: 0 after they disconnect")

	// 6. Rules: all loaded and healthy, nothing pending or firing.
	return r.checkRules()
}

// startDev starts `herald dev` and returns its banner once it says ready.
func (r *scrapeRun) startDev(c *Command) ([]string, error) {
	proc, err := r.sup.Start("herald-dev", c)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(proc.Log)
		lines := strings.Split(string(b), "\n")
		for _, l := range lines {
			if strings.TrimSpace(l) == "ready" {
				return lines, nil
			}
		}
		if done, err := proc.Exited(); done {
			return nil, fmt.Errorf("herald dev exited (%v):\n%s", err, Tail(proc.Log, 20))
		}
		time.Sleep(200 * time.Millisecond)
	}
	return nil, fmt.Errorf("herald dev did not print ready:\n%s", Tail(proc.Log, 20))
}

func (r *scrapeRun) startPrometheus(dir, rules string, nodes []string, edge string) error {
	addr, err := freePort()
	if err != nil {
		return err
	}
	r.promAddr = addr
	quote := func(ts []string) string {
		q := make([]string, len(ts))
		for i, t := range ts {
			q[i] = strconv.Quote(t)
		}
		return strings.Join(q, ", ")
	}
	config := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - %s
scrape_configs:
  - job_name: herald-node
    static_configs:
      - targets: [%s]
  - job_name: herald-edge
    static_configs:
      - targets: [%s]
`, strconv.Quote(rules), quote(nodes), strconv.Quote(edge))
	path := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		return err
	}
	bin, err := exec.LookPath(r.prom)
	if err != nil {
		return fmt.Errorf("prometheus server: %w (Debian: apt-get install prometheus)", err)
	}
	proc, err := r.sup.Start("prometheus", &Command{Path: bin, Env: []string{"PATH=" + os.Getenv("PATH")}, Args: []string{
		"--config.file=" + path,
		"--storage.tsdb.path=" + filepath.Join(dir, "tsdb"),
		"--web.listen-address=" + addr,
		"--log.level=warn",
	}})
	if err != nil {
		return err
	}
	return WaitHTTP200("http://"+addr+"/-/ready", proc, time.Now().Add(60*time.Second))
}

func (r *scrapeRun) cli(args ...string) (string, error) {
	c := &Command{Path: filepath.Join(r.bin, "herald"), Env: []string{"PATH=" + os.Getenv("PATH")},
		Args: append([]string{"--server", r.grpc, "--api-key", r.key}, args...)}
	out, err := RunOnce(c, 30*time.Second)
	if err != nil {
		return out, fmt.Errorf("herald %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(out))
	}
	return out, nil
}

func (r *scrapeRun) api(path string, params url.Values, into any) error {
	resp, err := http.Get("http://" + r.promAddr + path + "?" + params.Encode())
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var envelope struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(body, &envelope); err != nil {
		return fmt.Errorf("%s: %s", path, body)
	}
	if envelope.Status != "success" {
		return fmt.Errorf("%s %v: %s", path, params, envelope.Error)
	}
	return json.Unmarshal(envelope.Data, into)
}

// query evaluates an instant query that must return one sample (an empty
// result counts as 0: sum() of nothing).
func (r *scrapeRun) query(expr string) (float64, error) {
	var data struct {
		Result []struct {
			Value [2]any `json:"value"`
		} `json:"result"`
	}
	if err := r.api("/api/v1/query", url.Values{"query": {expr}}, &data); err != nil {
		return 0, err
	}
	switch len(data.Result) {
	case 0:
		return 0, nil
	case 1:
		s, _ := data.Result[0].Value[1].(string)
		return strconv.ParseFloat(s, 64)
	}
	return 0, fmt.Errorf("%s: %d series, want 1", expr, len(data.Result))
}

func (r *scrapeRun) waitValue(expr string, want, tolerance float64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var got float64
	var err error
	for time.Now().Before(deadline) {
		got, err = r.query(expr)
		if err == nil && math.Abs(got-want) <= tolerance {
			return nil
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	return fmt.Errorf("%s = %v, want %v", expr, got, want)
}

// structural alerts must be inactive on a healthy cluster whatever the
// load; the rate and latency ones may flicker on a handful of samples.
var structural = map[string]bool{
	"HeraldNoLeader": true, "HeraldNodeWithoutLeader": true, "HeraldClusterDown": true,
	"HeraldNodeDown": true, "HeraldCommitLag": true, "HeraldApplyLag": true,
	"HeraldFollowerBehind": true, "HeraldPeerHandshakesRefused": true,
	"HeraldEdgeWithoutUpstream": true,
}

func (r *scrapeRun) checkRules() error {
	var data struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Name      string `json:"name"`
				Health    string `json:"health"`
				LastError string `json:"lastError"`
				State     string `json:"state"`
			} `json:"rules"`
		} `json:"groups"`
	}
	// Wait for a couple of evaluations after the load.
	time.Sleep(3 * time.Second)
	if err := r.api("/api/v1/rules", url.Values{}, &data); err != nil {
		return err
	}
	var bad []string
	n, seen := 0, 0
	for _, g := range data.Groups {
		for _, rule := range g.Rules {
			n++
			if structural[rule.Name] {
				seen++
			}
			if rule.Health != "ok" {
				bad = append(bad, fmt.Sprintf("%s/%s: health %s %s", g.Name, rule.Name, rule.Health, rule.LastError))
			}
			if structural[rule.Name] && rule.State != "" && rule.State != "inactive" {
				bad = append(bad, fmt.Sprintf("%s/%s is %s on a healthy cluster", g.Name, rule.Name, rule.State))
			} else if rule.State == "pending" || rule.State == "firing" {
				fmt.Printf("  (%s is %s: a rate or latency rule on a few dozen samples of a loaded machine)\n", rule.Name, rule.State)
			}
		}
	}
	if seen != len(structural) {
		return fmt.Errorf("prometheus loaded %d rules, %d of the %d structural alerts this check knows", n, seen, len(structural))
	}
	if len(bad) > 0 {
		return errors.New(strings.Join(bad, "\n"))
	}
	fmt.Printf("  %d alert rules loaded and evaluated without error; no structural alert (leader, nodes, lag, peers, edge links) pending or firing\n", n)
	return nil
}

// openSSE opens an SSE stream and keeps reading it until ctx ends.
func openSSE(ctx context.Context, addr, channel string) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/connection/sse?channel="+url.QueryEscape(channel), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return fmt.Errorf("SSE: %s", resp.Status)
	}
	go func() {
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
		}
	}()
	return nil
}
