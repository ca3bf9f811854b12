package main

import (
	"strings"
	"testing"
)

func TestSummarize(t *testing.T) {
	in := `{"Action":"run","Package":"p","Test":"TestA"}
{"Action":"output","Package":"p","Test":"TestA","Output":"noise of a passing test\n"}
{"Action":"pass","Package":"p","Test":"TestA","Elapsed":1.5}
{"Action":"run","Package":"p","Test":"TestB"}
{"Action":"output","Package":"p","Test":"TestB","Output":"why B failed\n"}
{"Action":"fail","Package":"p","Test":"TestB","Elapsed":3}
{"Action":"fail","Package":"p","Elapsed":4.5}
`
	var b strings.Builder
	failed, err := summarize(strings.NewReader(in), &b)
	if err != nil || !failed {
		t.Fatalf("failed=%v err=%v", failed, err)
	}
	got := b.String()
	for _, want := range []string{"--- PASS: TestA (1.5s)", "--- FAIL: TestB (3.0s)", "why B failed", "FAIL\tp\t4.5s", "3.0s  fail  TestB"} {
		if !strings.Contains(got, want) {
			t.Errorf("summary lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "noise of a passing test") {
		t.Errorf("a passing test's output was printed:\n%s", got)
	}
}

func TestSummarizeUnfinished(t *testing.T) {
	in := `{"Action":"run","Package":"p","Test":"TestC"}
{"Action":"output","Package":"p","Test":"TestC","Output":"panic: test timed out\n"}
`
	var b strings.Builder
	failed, _ := summarize(strings.NewReader(in), &b)
	if !failed || !strings.Contains(b.String(), "UNFINISHED: p/TestC") || !strings.Contains(b.String(), "panic: test timed out") {
		t.Fatalf("failed=%v:\n%s", failed, b.String())
	}
}

func TestSummarizePass(t *testing.T) {
	in := `{"Action":"pass","Package":"p","Test":"TestA","Elapsed":1}
{"Action":"pass","Package":"p","Elapsed":1}
`
	var b strings.Builder
	if failed, err := summarize(strings.NewReader(in), &b); failed || err != nil {
		t.Fatalf("failed=%v err=%v:\n%s", failed, err, b.String())
	}
}
