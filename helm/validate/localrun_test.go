package main

import "testing"

func TestReplaceAddrOnlyWholeTokens(t *testing.T) {
	cases := []struct{ in, want string }{
		{"--peers=1=a.svc:7100,2=b.svc:7100", "--peers=1=127.0.0.1:1,2=b.svc:7100"},
		{"--nodes=a.svc:71000", "--nodes=a.svc:71000"},  // longer port
		{"--nodes=xa.svc:7100", "--nodes=xa.svc:7100"},  // longer host
		{"http://a.svc:7100/x", "http://127.0.0.1:1/x"}, // URL
	}
	for _, c := range cases {
		if got := replaceAddr(c.in, "a.svc:7100", "127.0.0.1:1"); got != c.want {
			t.Errorf("replaceAddr(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestExpandVarsLikeKubernetes(t *testing.T) {
	env := map[string]string{"POD_NAME": "herald-node-0"}
	for in, want := range map[string]string{
		"--advertise=$(POD_NAME).h:7100": "--advertise=herald-node-0.h:7100",
		"$(UNSET) stays":                 "$(UNSET) stays",
		"$$(POD_NAME) is escaped":        "$(POD_NAME) is escaped",
	} {
		if got := expandVars(in, env); got != want {
			t.Errorf("expandVars(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestCheckArgs(t *testing.T) {
	i := &Interface{Binary: "b", Flags: map[string]bool{"data-dir": true, "learner": false}}
	if bad := i.CheckArgs([]string{"--data-dir=/x", "--learner", "--data-dir", "/y"}); len(bad) != 0 {
		t.Errorf("valid arguments refused: %v", bad)
	}
	for _, args := range [][]string{{"--nope"}, {"--learner=true"}, {"--data-dir"}, {"positional"}} {
		if bad := i.CheckArgs(args); len(bad) == 0 {
			t.Errorf("%v accepted", args)
		}
	}
}
