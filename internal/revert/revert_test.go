package revert

import (
	"reflect"
	"testing"
)

func TestFailRunsInReverse(t *testing.T) {
	var got []int
	r := New()
	r.Add(func() { got = append(got, 1) })
	r.Add(func() { got = append(got, 2) })
	r.Fail()
	r.Fail() // second call is a no-op
	if !reflect.DeepEqual(got, []int{2, 1}) {
		t.Fatalf("undo order = %v, want [2 1]", got)
	}
}

func TestSuccessSkipsUndo(t *testing.T) {
	ran := false
	r := New()
	r.Add(func() { ran = true })
	r.Success()
	r.Fail()
	if ran {
		t.Fatal("undo ran after Success")
	}
}

func TestCloneHandsOverUndo(t *testing.T) {
	ran := 0
	r := New()
	r.Add(func() { ran++ })
	c := r.Clone()
	r.Fail()
	if ran != 0 {
		t.Fatal("original ran undo after Clone")
	}
	c.Fail()
	if ran != 1 {
		t.Fatalf("clone ran undo %d times, want 1", ran)
	}
}
