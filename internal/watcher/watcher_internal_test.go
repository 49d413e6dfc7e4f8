package watcher

import "testing"

func TestSendsEarlyProgress(t *testing.T) {
	for v, want := range map[string]bool{
		"3.4.23": true, "3.4.24": true, "3.4.25": false, "3.5.0": true, "3.5.7": true, "3.5.8": false,
		"3.6.0": false, "3.7.1": false, "3.3.27": true, "garbage": true, "": true, "4.0.0": false,
	} {
		if got := sendsEarlyProgress(v); got != want {
			t.Errorf("sendsEarlyProgress(%q) = %v, want %v", v, got, want)
		}
	}
}
